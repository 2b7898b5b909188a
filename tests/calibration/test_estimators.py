"""Range estimators and quantization parameters against values computed by hand (or known analytically)."""

from __future__ import annotations

import numpy as np
import pytest
from edgepack.calibration.estimators import (
    EntropyEstimator,
    MinMaxEstimator,
    MovingAverageMinMaxEstimator,
    MSEEstimator,
    PercentileEstimator,
    kl_after_clipping,
    make_estimator,
)
from edgepack.calibration.histogram import StreamingHistogram

from edgepack.core.quantization import activation_params, weight_params

RNG = np.random.default_rng(0)


def observe_all(estimator, batches):
    for batch in batches:
        estimator.observe(np.asarray(batch, dtype=np.float32))
    return estimator.range()


def test_min_max_over_batches():
    assert observe_all(MinMaxEstimator(), [[1, -2, 3], [5], []]) == (-2.0, 5.0)


def test_moving_average_weights_later_batches_by_one_minus_momentum():
    low, high = observe_all(MovingAverageMinMaxEstimator(momentum=0.9), [[0, 10], [-10, 20]])
    assert (low, high) == pytest.approx((-1.0, 11.0))  # 0.9*0 + 0.1*-10, 0.9*10 + 0.1*20


def test_histogram_doubling_is_exact_and_memory_is_flat():
    batches = [RNG.normal(0, scale, 1000) for scale in (0.1, 1.0, 10.0, 3.0)]
    histogram = StreamingHistogram(bins=64)
    for batch in batches:
        histogram.observe(batch)
    everything = np.concatenate(batches)
    expected = np.histogram(everything, bins=64, range=(-histogram.half_range, histogram.half_range))[0]
    assert np.array_equal(histogram.counts, expected) and histogram.total == everything.size
    assert histogram.counts.size == 64 and histogram.half_range >= np.abs(everything).max()


def test_zeros_before_any_range_are_kept():
    histogram = StreamingHistogram(bins=8)
    histogram.observe(np.zeros(5))
    histogram.observe(np.array([1.0]))
    assert histogram.total == 6 and histogram.counts[4] == 5


def test_percentile_of_uniform_and_gaussian():
    uniform = np.arange(1, 10001) / 10000.0
    assert observe_all(PercentileEstimator(99.0), [uniform])[1] == pytest.approx(0.99, abs=1e-3)
    gaussian = RNG.standard_normal(400_000)
    low, high = observe_all(PercentileEstimator(99.73, symmetric=True), [gaussian])
    assert high == pytest.approx(3.0, rel=0.02) and low == -high  # 99.73 % of a Gaussian lies within 3 sigma


def test_kl_after_clipping_by_hand():
    # P = [2,0,2,4] -> 2 levels: sums [2, 6] spread over non-empty bins -> Q = [2, 0, 3, 3]
    # KL = .25 ln(.25/.25) + .25 ln(.25/.375) + .5 ln(.5/.375) = 0.042475
    assert kl_after_clipping(np.array([2, 0, 2, 4]), keep=4, levels=2) == pytest.approx(0.0424755, abs=1e-6)
    # Clipping at 2 bins folds the tail into P's last bin, P = [2, 1+2+4] = [2/9, 7/9], while Q is built, as in
    # TensorRT, from the unclipped kept bins: Q = [2, 1] = [2/3, 1/3].
    expected = 2 / 9 * np.log((2 / 9) / (2 / 3)) + 7 / 9 * np.log((7 / 9) / (1 / 3))
    assert kl_after_clipping(np.array([2, 1, 2, 4]), keep=2, levels=2) == pytest.approx(expected, abs=1e-9)


def test_entropy_clips_rare_outliers_but_keeps_the_bulk():
    data = np.concatenate([RNG.standard_normal(200_000), [60.0, -55.0]])
    low, high = observe_all(EntropyEstimator(symmetric=True), [data])
    assert 2.5 < high < 20 and low == -high  # well inside the outliers, well outside 99% of the Gaussian


def test_mse_matches_the_analytic_optimum_for_a_gaussian():
    # Banner et al. 2019 (ACIQ): the MSE-optimal symmetric clip for N(0,1) at 4 bits is 2.55 sigma.
    gaussian = RNG.standard_normal(1_000_000)
    low, high = observe_all(MSEEstimator(levels=16, symmetric=True), [gaussian])
    assert high == pytest.approx(2.55, rel=0.05) and low == -high
    uniform = RNG.uniform(0, 1, 100_000)
    assert observe_all(MSEEstimator(levels=256), [uniform])[1] == pytest.approx(1.0, abs=0.01)  # nothing to clip


@pytest.mark.parametrize("method", ["minmax", "moving_average", "percentile", "entropy", "mse"])
def test_every_method_gives_a_range_that_contains_most_of_the_data(method):
    data = RNG.normal(1.0, 2.0, 50_000)
    low, high = observe_all(make_estimator(method), np.split(data, 10))
    inside = np.mean((data >= low) & (data <= high))
    assert low < 1.0 < high and inside > 0.98


def test_activation_params_by_hand():
    p = activation_params(-1.0, 3.0, "int8")
    assert p.scale == np.float32(4 / 255) and p.zero_point == -64  # round(-128 + 1 / (4/255)) = round(-64.25)
    low, high = p.representable_range()
    assert (low, high) == pytest.approx((-64 * 4 / 255, 191 * 4 / 255))
    p = activation_params(0.0, 3.0, "int8")
    assert p.scale == np.float32(3 / 255) and p.zero_point == -128
    assert p.as_unsigned().zero_point == 0 and p.as_unsigned().dtype == "uint8"
    p16 = activation_params(-1.0, 3.0, "int16")
    assert p16.scale == np.float32(3 / 32767) and p16.zero_point == 0  # 16-bit is always symmetric
    p = activation_params(0.5, 2.0, "int8")  # a range without 0 is widened to include it
    assert p.dequantize(p.quantize(np.float32([0.0])))[0] == 0.0


def test_weight_params_per_channel_and_fake_quant_error():
    weights = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * np.array([1, 2, 0.5, 0]).reshape(4, 1, 1, 1)
    p = weight_params(weights, axis=0)
    expected = np.abs(weights).reshape(4, -1).max(1) / 127
    assert np.allclose(p.scale[:3], expected[:3]) and p.scale[3] == 1.0 and not p.zero_point.any()
    q = p.quantize(weights)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    error = np.abs(p.dequantize(q) - weights).reshape(4, -1).max(1)
    assert np.all(error <= p.scale / 2 + 1e-7)
    assert weight_params(weights, axis=None).scale == np.float32(np.abs(weights).max() / 127)


FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("flags", [[-np.inf], [np.inf, -np.inf], [-FLOAT32_MAX], [FLOAT32_MAX], [np.nan]])
@pytest.mark.parametrize("first", [True, False])
def test_the_histogram_bins_the_finite_values_beside_infinities_and_float32_extremes(flags, first):
    """Attention masks put -inf or finfo.min into activations. Before, -inf made every bin NaN and a value near
    float32's maximum overflowed x + R (or R itself, after a doubling) to inf: np.bincount refused the negative
    indices ("'list' argument must have no negative elements"). Finite values keep their bins, the extremes stay."""
    signal = np.linspace(-2.0, 3.0, 1000, dtype=np.float32)
    batches = [np.array(flags, np.float32), signal] if first else [signal, np.array(flags, np.float32)]
    histogram = StreamingHistogram()
    for batch in batches:
        histogram.observe(batch)
    finite = [f for f in flags if np.isfinite(f)]
    assert histogram.total == signal.size + len(finite)
    low, high = histogram.observed_range()
    assert low <= min([-2.0, *[f for f in flags if not np.isnan(f)]]) and high >= 3.0
    assert np.isfinite(histogram.half_range) and histogram.counts.min() >= 0


def test_entropy_keeps_a_constant_tensor_whole():
    """An exported constant behind an Identity (MiniBert's LayerNorm weights of 1.0) is one spike, which every
    candidate clips at KL 0; the first candidate, chosen before, was 0.125."""
    assert observe_all(EntropyEstimator(), [np.ones(1000)])[1] == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_histogram_methods_survive_an_infinite_mask_value(method):
    estimator = make_estimator(method)
    estimator.observe(np.array([0.0, -np.inf, 1.0, 2.0, 0.5], np.float32))
    low, high = estimator.range()
    assert high > 0 and not np.isnan(low)
