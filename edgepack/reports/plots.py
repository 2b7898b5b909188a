"""The report's plots, drawn with matplotlib from the report data and embedded as SVG data URIs.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): nothing global changes, no display is needed, and
matplotlib is imported only when a report is written. Text is drawn as paths and ids are salted, so the same data
gives the same bytes and the page needs no fonts.
"""

from __future__ import annotations

import base64
import io

MAX_BARS = 40  # beyond this a bar chart is unreadable; the worst layers are kept
_STYLE = {
    "svg.fonttype": "path",
    "svg.hashsalt": "edgepack",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def build_plots(data: dict) -> list[dict]:
    """[{id, title, caption, uri}] for every plot the data can fill; plots without data are left out."""
    plots = [_accuracy_vs_size(data), _accuracy_vs_latency(data), _latency_distribution(data)]
    plots += [_layer_bars(name, rows, "sqnr_db", "SQNR (dB)", "sqnr") for name, rows in data["layer_sqnr"].items()]
    plots += [_sensitivity(data["sensitivity"])]
    # A file with no zero weight at all (structured pruning removes channels instead) gets no empty panel.
    plots += [_layer_bars(name, rows, "fraction", "zero weights", "sparsity")
              for name, rows in data["sparsity"].items() if any(r["fraction"] > 0 for r in rows)]  # fmt: skip
    plots += [_robustness(data["robustness"], _colors(data))]
    return [p for p in plots if p is not None]


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _svg_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(plot_id: str, title: str, caption: str, draw) -> dict:
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        figure = draw()
        return {"id": plot_id, "title": title, "caption": caption, "uri": _svg_uri(figure)}


def _color(index: int) -> str:
    return f"C{index % 10}"


def _colors(data: dict) -> dict[str, str]:
    """Artifact name -> colour, the same in every plot."""
    return {card["name"]: _color(i) for i, card in enumerate(data["artifacts"])}


def _accuracy_axis(ax, percents: list[float]) -> None:
    """Room around the points, never a tick above 100%."""
    low, high = min(percents), max(percents)
    margin = max(1.0, (high - low) * 0.15)
    ax.set_ylim(low - margin, min(high + margin, 100.5))
    ax.set_ylabel("top-1 (%)")


def _scored(data: dict) -> list[tuple[int, dict]]:
    """(colour index, card) of every artifact with a measured top-1; colours stay the same in every plot."""
    return [(i, c) for i, c in enumerate(data["artifacts"]) if c["top1"] is not None]


def _accuracy_vs_size(data: dict) -> dict | None:
    points = _scored(data)
    if not points:
        return None

    def draw():
        figure, ax = _figure()
        for i, card in points:
            ax.scatter(card["bytes"], card["top1"] * 100, s=60, color=_color(i), label=card["name"], zorder=3)
        _accuracy_axis(ax, [c["top1"] * 100 for _, c in points])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_kilobytes)
        ax.xaxis.set_minor_formatter(_kilobytes)
        ax.set_xlabel("file size (kB, log scale)")
        _label_points(ax, [(c["bytes"], c["top1"] * 100, c["name"]) for _, c in points])
        return figure

    caption = "Top-1 measured in each artifact's own runtime against its size on disk."
    return _plot("accuracy-vs-size", "Accuracy vs size", caption, draw)


def _kilobytes(value: float, _position) -> str:
    return f"{value / 1000:g}"


LABEL_POINTS = 8  # font size: a label line is about 1.2x this tall and 0.6x this wide per character, in points


def _label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Each name beside its point: up-right, else down-right, up-left or down-left, the first place where it
    overprints no marker and no name already placed (artifacts of about the same size and accuracy, such as an
    int8 file and its pruned float parent); where all four are taken, stacked above up-right."""
    ax.autoscale_view()  # the final limits and scales, so display positions are the drawn ones
    scale = ax.figure.dpi / 72  # display units per point
    line = 1.2 * LABEL_POINTS
    centres = [ax.transData.transform((x, y)) / scale for x, y, _ in points]
    taken = [(cx - 5, cy - 5, 10.0) for cx, cy in centres]  # (left, bottom, width) in points: markers, then labels

    def free(left: float, bottom: float, width: float) -> bool:
        return not any(abs(bottom - b) < line and left < x0 + w and x0 < left + width for x0, b, w in taken)

    for (x, y, name), (px, py) in zip(points, centres, strict=True):
        width = 0.6 * LABEL_POINTS * len(name)
        sides = [(6, 6), (6, -6 - line), (-6 - width, 6), (-6 - width, -6 - line)]
        dx, dy = next(((dx, dy) for dx, dy in sides if free(px + dx, py + dy, width)), sides[0])
        while not free(px + dx, py + dy, width):
            dy += line
        taken.append((px + dx, py + dy, width))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=LABEL_POINTS)


def _accuracy_vs_latency(data: dict) -> dict | None:
    points = [(i, c) for i, c in _scored(data) if c["primary_latency"] and c["primary_latency"]["p50"] is not None]
    if not points:
        return None
    where = data["primary_bench"]
    latencies = [c["primary_latency"]["p50"] for _, c in points]

    def draw():
        figure, ax = _figure()
        front = sorted((c["primary_latency"]["p50"], c["top1"] * 100) for _, c in points if c["pareto"])
        ax.step(*zip(*front, strict=True), where="post", color="0.4", linestyle="--", label="Pareto front", zorder=2)
        for i, card in points:
            size, edge = (110, "black") if card["pareto"] else (50, "none")
            ax.scatter(card["primary_latency"]["p50"], card["top1"] * 100, s=size, color=_color(i), edgecolors=edge,
                       zorder=3)  # fmt: skip
        _accuracy_axis(ax, [c["top1"] * 100 for _, c in points])
        log = _spans_decade(latencies)
        if log:  # a 16x8 reference-kernel file 50x slower than int8 would squash every other point to the left
            ax.set_xscale("log")
        _label_points(ax, [(c["primary_latency"]["p50"], c["top1"] * 100, c["name"]) for _, c in points])
        ax.set_xlabel(f"p50 latency (ms{', log scale' if log else ''}) on {where['target']}, {where['threads']} "
                      "thread(s)")  # fmt: skip
        ax.legend(loc="lower right")
        return figure

    caption = "Outlined points are on the Pareto front: no other artifact is both faster and more accurate."
    if _spans_decade(latencies):
        caption += " The latency axis is logarithmic: the p50s span more than 10x."
    return _plot("accuracy-vs-latency", "Accuracy vs latency", caption, draw)


def _spans_decade(values: list[float]) -> bool:
    """More than 10x between the smallest and the largest: a linear axis would hide the small ones."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) > 10 * min(positive)


def _latency_distribution(data: dict) -> dict | None:
    rows = [(i, c["name"], e) for i, c in enumerate(data["artifacts"]) for e in c["latency"] if e["p50"] is not None]
    if not rows:
        return None

    def draw():
        figure, ax = _figure(height=max(2.2, 0.55 * len(rows) + 1.2))
        stats = [_box_stats(f"{name}\n{e['target']}, {e['threads']} thr", e) for _, name, e in rows]
        boxes = ax.bxp(stats, orientation="horizontal", showmeans=True, patch_artist=True, widths=0.5)
        for (i, _, _), box in zip(rows, boxes["boxes"], strict=True):
            box.set_facecolor(_color(i))
            box.set_alpha(0.6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("latency per inference (ms, log scale)")
        return figure

    caption = "Box from min to p90 with the p50 line, whisker to p99, circle at max, triangle at mean."
    return _plot("latency-distribution", "Latency distribution", caption, draw)


def _box_stats(label: str, entry: dict) -> dict:
    """matplotlib bxp statistics from the benchmark's percentiles (a target may lack p90/p99: fall back inward)."""
    low, median = entry["min"] if entry["min"] is not None else entry["p50"], entry["p50"]
    upper = entry["p90"] if entry["p90"] is not None else median
    whisker = entry["p99"] if entry["p99"] is not None else upper
    fliers = [entry["max"]] if entry["max"] is not None else []
    mean = entry["mean"] if entry["mean"] is not None else median
    return {"label": label, "whislo": low, "q1": low, "med": median, "q3": upper, "whishi": whisker,
            "fliers": fliers, "mean": mean}  # fmt: skip


def _bars(labels: list[str], values: list[float], xlabel: str, color: str):
    figure, ax = _figure(height=max(2.2, 0.22 * len(labels) + 1.2))
    ax.barh(range(len(labels)), values, color=color)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return figure


def _layer_bars(artifact: str, rows: list[dict], key: str, xlabel: str, kind: str) -> dict:
    # The layers that matter most are the worst: lowest SQNR, highest sparsity.
    ordered = sorted(rows, key=lambda r: r[key], reverse=kind == "sparsity")[:MAX_BARS]
    from edgepack.reports.text import layer_name

    labels, values = [layer_name(r) for r in ordered], [r[key] for r in ordered]
    title = f"{'Quantization error (SQNR)' if kind == 'sqnr' else 'Sparsity'} per layer: {artifact}"
    caption = (
        f"Each layer's output SQNR against the float parent, lowest first (at most {MAX_BARS} layers)."
        if kind == "sqnr"
        else f"Fraction of zero weights per layer, highest first (at most {MAX_BARS} layers)."
    )
    return _plot(f"{kind}-{artifact}", title, caption, lambda: _bars(labels, values, xlabel, "C0"))


def _sensitivity(sensitivity: dict | None) -> dict | None:
    if not sensitivity or not sensitivity.get("layers"):
        return None
    ordered = sorted(sensitivity["layers"], key=lambda r: r["value"], reverse=sensitivity["higher_is_worse"])
    ordered = ordered[:MAX_BARS]
    labels, values = [r["layer"] for r in ordered], [r["value"] for r in ordered]
    xlabel = f"{sensitivity['metric']} ({sensitivity['unit']})"
    caption = "The layers that hurt most when quantized alone, worst first" + (
        f", on {sensitivity['artifact']}." if sensitivity.get("artifact") else "."
    )
    return _plot("sensitivity", "Layer sensitivity", caption, lambda: _bars(labels, values, xlabel, "C3"))


def _robustness(table: dict | None, colors: dict[str, str]) -> dict | None:
    if table is None:
        return None
    labels = ["clean", *(c["label"] for c in table["conditions"])]
    noise = [0] + [k + 1 for k, c in enumerate(table["conditions"]) if c["kind"] == "gaussian_noise"]

    def draw():
        figure, ax = _figure()
        for n, row in enumerate(table["rows"]):
            color = colors.get(row["artifact"], "C0")
            dodge = 0.06 * (n - (len(table["rows"]) - 1) / 2)  # artifacts with equal figures stay visible side by side
            percent = [None if v is None else v * 100 for v in (row["clean"], *row["top1"])]
            xs = [k + dodge for k in noise]
            ax.plot(xs, [percent[k] for k in noise], marker="o", color=color, label=row["artifact"], alpha=0.85)
            others = [k for k in range(len(labels)) if k not in noise and percent[k] is not None]
            ax.scatter([k + dodge for k in others], [percent[k] for k in others], marker="s", color=color, zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8)
        return figure

    caption = f"Top-1 on {table['samples']} samples under Gaussian input noise (lines) and brightness/contrast shifts."
    return _plot("robustness", "Robustness", caption, draw)
