"""report.html, report.md and report.json from the same data: from a results.json holding every optional key, from
one holding none of them, and from a real run."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET

import pytest

from edgepack.core.results_format import OPTIONAL_ARTIFACT_KEYS, OPTIONAL_RUN_KEYS
from edgepack.reports.data import build_report_data
from edgepack.reports.report import write_reports

ALL_PLOTS = ["accuracy-vs-size", "accuracy-vs-latency", "latency-distribution", "sqnr-onnx-int8", "sqnr-tflite-int8",
             "sensitivity", "sparsity-tflite-int8", "robustness"]  # fmt: skip


def plot_images(html: str) -> dict[str, str]:
    """figure id -> the embedded image's data URI."""
    return dict(re.findall(r'<figure id="([^"]+)">\s*<img src="([^"]+)"', html))


def svg_root(uri: str) -> ET.Element:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    return ET.fromstring(base64.b64decode(uri[len(prefix) :]))


def without_optional_keys(results: dict) -> dict:
    for key in OPTIONAL_RUN_KEYS:
        results.pop(key, None)
    for artifact in results["artifacts"]:
        for key in OPTIONAL_ARTIFACT_KEYS:
            artifact.pop(key, None)
    return results


@pytest.fixture
def full_report(full_results, tmp_path):
    write_reports(tmp_path, full_results)
    return tmp_path


def test_every_plot_is_an_embedded_svg_and_the_page_needs_no_network(full_report):
    html = (full_report / "report.html").read_text()
    images = plot_images(html)
    assert list(images) == ALL_PLOTS
    for uri in images.values():
        root = svg_root(uri)
        assert root.tag.endswith("svg") and float(root.get("width").removesuffix("pt")) > 100
    assert html.count("<img") == len(ALL_PLOTS)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html and "<link" not in html


def test_cards_show_size_accuracy_latency_energy_and_the_gate(full_report):
    html = (full_report / "report.html").read_text()
    assert "2.25x smaller vs tflite-fp32" in html and "2.39x smaller vs onnx-fp32" in html  # 7612/3384, 14643/6120
    assert "-1.11 pp vs torch-fp32" in html and "-0.56 pp vs torch-fp32" in html
    assert "adb://emulator-5554 ×1" in html and ">0.84<" in html  # measured energy where a sensor gave it
    assert "~1.08 (proxy)" in html
    assert "tflite-int8: top-1 drop 1.11 pp (97.22% -&gt; 96.11%) exceeds the budget 1 pp" in html
    assert "artifacts/digits_cnn.int8.tflite" in html and "b" * 64 in html  # files and hashes at the end
    assert html.index("Recipe</h2>") > html.index("Robustness</h2>")


def test_report_data_marks_the_pareto_front_and_compares_with_the_float_of_the_same_format(full_results):
    data = build_report_data(full_results)
    cards = {c["name"]: c for c in data["artifacts"]}
    assert {name for name, c in cards.items() if c["pareto"]} == {"tflite-fp32", "tflite-int8"}
    assert cards["tflite-int8"]["baseline"] == "tflite-fp32"
    assert cards["tflite-int8"]["compression"] == pytest.approx(7612 / 3384)
    assert cards["onnx-int8"]["accuracy_drop_pp"] == pytest.approx((0.9722222 - 0.9666667) * 100, abs=1e-4)
    assert data["primary_bench"] == {"target": "host", "threads": 1}
    robustness = {r["artifact"]: r for r in data["robustness"]["rows"]}
    assert robustness["tflite-int8"]["worst_drop_pp"] == pytest.approx(45.0)


def test_markdown_and_json_come_from_the_same_data(full_results, full_report):
    markdown = (full_report / "report.md").read_text()
    assert markdown.index("**Gate failed**") < markdown.index("## Artifacts")  # a PR comment opens with the verdict
    assert "- tflite-int8: top-1 drop 1.11 pp" in markdown
    assert "| tflite-int8 | 3,384 | 2.25x smaller vs tflite-fp32 | 96.11% | -1.11 pp | host x2 |" in markdown
    assert "| onnx-int8 | 96.67% | 96.11% | 91.67% | 55.67% |" in markdown
    assert "**tflite-int8** lowest SQNR: fully_connected 17.8 dB, conv2d_1 22.4 dB" in markdown
    assert "**Most sensitive layers** (top-1 drop with only this layer in int8): node_linear 1.11 pp" in markdown
    on_disk = json.loads((full_report / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(build_report_data(full_results)))


def test_sections_without_data_are_left_out(full_results, tmp_path):
    write_reports(tmp_path, without_optional_keys(full_results))
    html, markdown = (tmp_path / "report.html").read_text(), (tmp_path / "report.md").read_text()
    assert list(plot_images(html)) == ["accuracy-vs-size", "accuracy-vs-latency", "latency-distribution"]
    assert "CI gate" not in html and "Robustness</h2>" not in html and "Per-layer" not in markdown
    assert "Gate" not in markdown and "## Robustness" not in markdown


def test_the_same_results_give_the_same_bytes(full_results, tmp_path):
    write_reports(tmp_path / "a", full_results)
    write_reports(tmp_path / "b", full_results)
    for name in ("report.html", "report.md", "report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_real_run_writes_the_html_report_with_its_robustness(digits_run):
    html = (digits_run.run_dir / "report.html").read_text()
    images = plot_images(html)
    assert list(images) == ["accuracy-vs-size", "accuracy-vs-latency", "latency-distribution", "robustness"]
    for uri in images.values():
        svg_root(uri)
    assert "noise 10 dB" in html and "conv_net" in html
    for artifact in digits_run.artifacts:
        assert artifact["sha256"] in html


@pytest.mark.parametrize(
    ("ratio", "text"),
    [(7612 / 3384, "2.25x smaller vs tflite-fp32"), (0.5, "2.00x larger vs tflite-fp32"),
     (5824 / 5824, "same size as tflite-fp32"), (1.004, "same size as tflite-fp32")],
)  # fmt: skip
def test_size_ratio_reads_as_words_and_equal_sizes_are_not_called_smaller(ratio, text):
    from edgepack.reports.text import FILTERS

    assert FILTERS["ratio"](ratio, "tflite-fp32") == text


def test_names_of_points_at_the_same_place_do_not_overprint_each_other():
    """An int8 file and its pruned float parent can share size and accuracy: both names must stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from edgepack.reports.plots import _label_points

    points = [(5824, 94.17, "torch-pruned"), (5824, 94.17, "tflite-int8"), (6824, 93.89, "onnx-int8"),
              (7612, 94.17, "tflite-fp32"), (6824, 93.89, "same-as-onnx-int8")]  # fmt: skip
    figure, ax = plt.subplots()
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_xscale("log")
    _label_points(ax, points)
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    assert [text.get_text() for text in ax.texts] == [p[2] for p in points]
    overlapping = [(a, b) for i, a in enumerate(ax.texts) for j, b in enumerate(ax.texts)
                   if i < j and boxes[i].overlaps(boxes[j])]  # fmt: skip
    assert overlapping == []
    plt.close(figure)


def test_an_integer_file_slower_than_its_float_one_is_named_in_every_report(full_results, tmp_path):
    # host, 1 thread: onnx-int8 0.0131 ms vs onnx-fp32 0.010345 ms; tflite-int8 0.0021 vs 0.002624 (faster); the
    # other tflite-int8 records have no float record on the same target and threads to compare with.
    line = "onnx-int8 runs 1.27x slower than onnx-fp32 on host with 1 thread(s) (p50 0.0131 ms vs 0.0103 ms)"
    assert build_report_data(full_results)["slower_than_float"] == [line]
    write_reports(tmp_path, full_results)
    assert f"- {line}" in (tmp_path / "report.md").read_text()
    assert f'<li class="drop">{line}</li>' in (tmp_path / "report.html").read_text()


def test_a_few_percent_slower_is_run_to_run_noise_and_not_named(full_results):
    onnx_int8 = next(a for a in full_results["artifacts"] if a["name"] == "onnx-int8")
    onnx_int8["bench"][0]["latency_ms"]["p50"] = 0.0113  # 1.09x the float file's
    assert build_report_data(full_results)["slower_than_float"] == []


def test_a_qat_model_below_ptq_is_a_warning_in_every_report(full_results, tmp_path):
    source = full_results["artifacts"][0]
    vs = {"data": "144 held-out samples of digits (train split)", "qat_below_ptq": True,
          "ptq": {"top1": 0.99, "agreement": 1.0, "runtime": "onnxruntime 1.32.0"},
          "qat": {"top1": 0.9, "agreement": 0.9, "runtime": "onnxruntime 1.32.0"}}  # fmt: skip
    qat = {**source, "name": "torch-qat", "parent": source["name"], "stage": "qat",
           "details": {"qat": {"vs_ptq": vs, "scheme": {"precision": "int8"}, "weight_bits": "int8",
                               "packed_weight_bytes": 100}}}  # fmt: skip
    full_results["artifacts"].insert(1, qat)
    line = (f"torch-qat: QAT int8 top-1 90.00% is below the PTQ int8 top-1 99.00% from {source['name']} (144 "
            "held-out samples of digits (train split), onnxruntime 1.32.0); quantize without the qat stage, or lower "
            "its learning rate")  # fmt: skip
    assert build_report_data(full_results)["qat_below_ptq"] == [line]
    write_reports(tmp_path, full_results)
    assert f"**Warning, QAT below PTQ:**\n\n- {line}" in (tmp_path / "report.md").read_text()
    assert f'<li class="drop">{line}</li>' in (tmp_path / "report.html").read_text()
    vs["qat_below_ptq"] = False
    assert build_report_data(full_results)["qat_below_ptq"] == []


def test_latencies_spanning_over_ten_times_get_a_log_axis_and_zero_sparsity_gets_no_panel(full_results, tmp_path):
    write_reports(tmp_path, full_results)
    assert "The latency axis is logarithmic" not in (tmp_path / "report.html").read_text()  # 0.0021..0.0131 ms
    slow = next(a for a in full_results["artifacts"] if a["name"] == "onnx-int8")
    slow["bench"][0]["latency_ms"]["p50"] = 0.5  # a 16x8 reference-kernel file: 240x the fastest
    for layer in next(a for a in full_results["artifacts"] if a.get("sparsity"))["sparsity"]:
        layer["fraction"] = 0.0  # structured pruning: channels removed, no zero weight left
    write_reports(tmp_path, full_results)
    html = (tmp_path / "report.html").read_text()
    assert "The latency axis is logarithmic: the p50s span more than 10x." in html
    assert list(plot_images(html)) == [p for p in ALL_PLOTS if not p.startswith("sparsity-")]


def test_per_layer_sqnr_shows_the_torch_module_where_known(full_results):
    from edgepack.reports.report import render_markdown

    rows = next(a for a in full_results["artifacts"] if a["name"] == "onnx-int8")["layer_sqnr"]
    worst = min(rows, key=lambda r: r["sqnr_db"])
    worst["module"] = "features.3"
    assert f"{worst['layer']} (features.3) {worst['sqnr_db']:.1f} dB" in render_markdown(full_results)
