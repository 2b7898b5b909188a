"""Calibration's shortcuts against the exact computation they replace: the subsampled, buffered streaming histogram
and the prefix-sum searches of the entropy and MSE estimators."""

from __future__ import annotations

import numpy as np
import pytest
from edgepack.calibration import histogram as histogram_module
from edgepack.calibration.collect import collect_ranges
from edgepack.calibration.estimators import (
    MSEEstimator,
    PercentileEstimator,
    clipping_errors,
    kl_after_clipping,
    kl_after_clipping_all,
    make_estimator,
)
from edgepack.calibration.histogram import PENDING_VALUES, StreamingHistogram
from edgepack.calibration.plan import plan_quantization
from edgepack.calibration.sources import load_digits_dataset

RNG = np.random.default_rng(0)
LIMIT = 4096


@pytest.fixture
def pure_sampling(monkeypatch):
    """Subsample from the first batch on (no exact start): the worst case of the approximation."""
    monkeypatch.setattr(histogram_module, "EXACT_VALUES", 0)


PER_SAMPLE = LIMIT // 32  # digits' ReLU outputs hold 512 and 1024 values a sample: binned one in 4 and one in 8
SAMPLED = {"percentile": lambda: PercentileEstimator(99.99, sample_limit=PER_SAMPLE),
           "mse": lambda: MSEEstimator(sample_limit=PER_SAMPLE)}  # fmt: skip
EXACT = {"percentile": lambda: PercentileEstimator(99.99), "mse": lambda: MSEEstimator()}


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_sampled_ranges_on_a_real_model_within_eight_percent_of_exact(digits_onnx_any_batch, method):
    """The 1437 train digits, many a call: after the first 262144 values the ReLU outputs are binned one in 4 and
    one in 8; the image (64 values a sample), pooled features (16) and logits (10) are under the limit and must
    come out identical."""
    tensors = plan_quantization(digits_onnx_any_batch).activations
    train = load_digits_dataset("image", "train")
    exact = collect_ranges(digits_onnx_any_batch, tensors, train, lambda _: EXACT[method]())
    sampled = collect_ranges(digits_onnx_any_batch, tensors, train, lambda _: SAMPLED[method]())
    assert len(tensors) == 5
    small = [t for t in tensors if "Relu" not in t]
    assert len(small) == 3 and all(sampled[t] == exact[t] for t in small)
    for name in set(tensors) - set(small):
        assert sampled[name][0] == exact[name][0] == 0.0
        # measured: percentile 0.3% and 3.4%, mse 4.8% (the sparse tail of 184k binned values of 1.47M)
        assert sampled[name][1] == pytest.approx(exact[name][1], rel=0.08), name


def test_entropy_from_make_estimator_bins_every_value():
    estimator = make_estimator("entropy")
    assert estimator.histogram.sample_limit is None
    assert make_estimator("percentile").histogram.sample_limit == LIMIT
    assert make_estimator("mse", sampled=False).histogram.sample_limit is None


def test_sampled_percentile_lies_within_the_binomial_band_of_the_exact_one(pure_sampling):
    """A sampled percentile p is the exact histogram's percentile at some p' with |p' - p| within 5 standard
    errors of a proportion over the M values binned (sqrt(p (1 - p) / M)), give or take one bin."""
    batches = [np.concatenate([RNG.normal(0, 1, 95_000), RNG.standard_t(3, 5_000)]).astype(np.float32)
               for _ in range(40)]  # fmt: skip
    exact, sampled = PercentileEstimator(99.9), PercentileEstimator(99.9, sample_limit=LIMIT)
    for batch in batches:
        exact.observe(batch)
        sampled.observe(batch)
    binned = 40 * len(batches[0][:: -(-batches[0].size // LIMIT)])
    band = 100 * 5 * np.sqrt(0.999 * 0.001 / binned)
    bin_width = exact.histogram.half_range / (exact.histogram.bins // 2)
    low_p, high_p = PercentileEstimator(99.9 - band), PercentileEstimator(99.9 + band)
    low_p.histogram, high_p.histogram = exact.histogram, exact.histogram
    assert low_p.range()[1] - bin_width <= sampled.range()[1] <= high_p.range()[1] + bin_width
    assert sampled.histogram.observed_range() == (min(b.min() for b in batches), max(b.max() for b in batches))
    assert abs(sampled.range()[1] - exact.range()[1]) < 0.03 * exact.range()[1]


def test_sampled_mse_bound_within_three_percent_of_exact(pure_sampling):
    batches = [np.maximum(RNG.normal(0.5, 1, 60_000), 0).astype(np.float32) for _ in range(30)]  # ReLU-like
    exact, sampled = MSEEstimator(), MSEEstimator(sample_limit=LIMIT)
    for batch in batches:
        exact.observe(batch)
        sampled.observe(batch)
    assert exact.range()[0] == sampled.range()[0] == 0.0
    assert sampled.range()[1] == pytest.approx(exact.range()[1], rel=0.03)
    assert 2.0 < exact.range()[1] < 6.0  # a clip inside the data (max about 5.9), not its edge


def test_the_first_values_are_binned_exactly_despite_the_limit():
    batches = [RNG.standard_normal(100_000) for _ in range(3)]  # each starts under EXACT_VALUES (262144) seen
    histogram = StreamingHistogram(bins=64, sample_limit=LIMIT)
    for batch in batches:
        histogram.observe(batch)
    everything = np.concatenate(batches)
    expected = np.histogram(everything, bins=64, range=(-histogram.half_range, histogram.half_range))[0]
    assert np.array_equal(histogram.counts, expected)
    histogram.observe(RNG.standard_normal(100_003))  # past EXACT_VALUES: 4000 or 4001 values, each counted 25 times
    assert histogram.total in (400_000, 400_025)


def test_extremes_stay_exact_when_the_outlier_is_not_sampled(pure_sampling):
    batch = np.zeros(100_000, dtype=np.float32)
    batch[1] = 50.0  # stride 25: offset 1 is one of 25 equally likely starts
    batch[2] = -7.0
    histogram = StreamingHistogram(sample_limit=LIMIT, seed=3)
    histogram.observe(batch)
    assert histogram.observed_range() == (-7.0, 50.0) and histogram.half_range == 50.0
    assert abs(histogram.total - 100_000) <= 25  # every sampled value counts stride (25) times


def test_sampling_is_deterministic_for_a_seed(pure_sampling):
    batches = [RNG.standard_normal(50_000) for _ in range(5)]

    def counts(seed):
        histogram = StreamingHistogram(sample_limit=LIMIT, seed=seed)
        for batch in batches:
            histogram.observe(batch)
        return histogram.counts.copy(), histogram.total

    (first, total), (again, _), (other, other_total) = counts(7), counts(7), counts(8)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    # every 13th value (ceil(50000 / 4096)) from an offset below 13, each counted 13 times
    assert abs(total - 250_000) <= 5 * 13 and abs(other_total - 250_000) <= 5 * 13


def test_small_batches_wait_in_a_bounded_buffer_and_are_binned_exactly():
    batches = [RNG.normal(0, scale, 3000).astype(np.float32) for scale in (0.1, 1.0, 10.0, 3.0)] * 10
    histogram = StreamingHistogram(bins=64)  # exact: no sampling, but buffered
    for batch in batches:
        histogram.observe(batch)
        assert histogram._pending_size < PENDING_VALUES  # memory stays bounded
    everything = np.concatenate(batches)
    expected = np.histogram(everything, bins=64, range=(-histogram.half_range, histogram.half_range))[0]
    # float32 values are binned in float32: one within float32 rounding of an edge may land in the next bin
    assert np.abs(histogram.counts - expected).sum() <= 2 and histogram.total == everything.size


def test_kl_of_every_candidate_at_once_equals_one_at_a_time():
    for trial in range(12):
        length, levels = int(RNG.integers(300, 2049)), (128, 256)[trial % 2]
        counts = (RNG.exponential(1, length) ** 3 * 100).astype(np.int64) * (RNG.random(length) > 0.3)
        counts[levels : levels + 40] = 0  # candidates whose last kept bin is empty
        counts[-1] += 1
        keeps = np.arange(levels, length + 1, max(1, (length - levels) // 512))
        one_at_a_time = [kl_after_clipping(counts, int(k), levels) for k in keeps]
        assert kl_after_clipping_all(counts, keeps, levels) == pytest.approx(one_at_a_time, rel=1e-9, abs=1e-12)


def test_clipping_errors_equal_the_direct_sum_over_bins():
    counts = (RNG.exponential(1, 1500) ** 3 * 100).astype(np.int64)
    width, levels = 0.01, 16
    bounds = np.linspace(1 / 200, 1, 200) * counts.size * width
    centers = (np.arange(counts.size) + 0.5) * width
    clipped = np.maximum(centers[None, :] - bounds[:, None], 0.0) ** 2
    rounding = np.where(centers[None, :] <= bounds[:, None], (bounds[:, None] / (levels - 1)) ** 2 / 12, 0.0)
    direct = ((clipped + rounding) * counts[None, :]).sum(axis=1)
    assert clipping_errors(counts, width, bounds, levels) == pytest.approx(direct, rel=1e-7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ignored_zeros_are_taken_out_of_exactly_the_bin_they_fell_in(dtype):
    batches = [np.maximum(RNG.normal(0, scale, 5000), 0).astype(dtype) for scale in (1.0, 3.0, 0.5)]  # half zeros
    batches[1][:10] = -0.001  # a few tiny negatives share the zero's neighbourhood
    histogram = StreamingHistogram(bins=64, ignore_zeros=True)
    for batch in batches:
        histogram.observe(batch)
    nonzero = np.concatenate(batches)
    nonzero = nonzero[nonzero != 0]
    expected = np.histogram(nonzero, bins=64, range=(-histogram.half_range, histogram.half_range))[0]
    assert histogram.total == nonzero.size and 7000 < nonzero.size < 8000  # zeros gone, nothing else
    assert np.abs(histogram.counts - expected).sum() <= 2  # float32 edge rounding at worst
    assert histogram.observed_range()[0] == float(dtype(-0.001))
