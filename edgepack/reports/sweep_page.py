"""sweep.html: one self-contained page for a sweep, from sweep.json alone: the best variant per gate budget, the
accuracy-vs-latency and accuracy-vs-size plots of every artifact of every variant (the Pareto front outlined), and a
row per variant. The same style, jinja2 environment and plot helpers as report.html."""

from __future__ import annotations

import datetime as dt

from edgepack.reports.gate import human_bytes
from edgepack.reports.html import _environment
from edgepack.reports.plots import _accuracy_axis, _color, _figure, _plot
from edgepack.reports.sweep_summary import points

HEADER = [
    "variant",
    "grid values",
    "status",
    "node",
    "bench start (UTC)",
    "bench end (UTC)",
    "artifacts: top-1, bytes, p50 ms",
]


def render_sweep_html(sweep: dict) -> str:
    best = list(sweep["best_per_budget"].items())
    return (
        _environment()
        .get_template("sweep.html.j2")
        .render(
            sweep=sweep, best=best, plots=sweep_plots(sweep), header=HEADER, rows=[_row(r) for r in sweep["variants"]]
        )
    )


def sweep_plots(sweep: dict) -> list[dict]:
    marked = [_point(p, sweep) for p in points(sweep["variants"])]
    timed = [p for p in marked if p["p50_ms"] is not None]
    plots = [_scatter(timed, "p50_ms", "p50 latency (ms), first target", "accuracy-vs-latency", "Accuracy vs latency")]
    plots.append(_scatter(marked, "bytes", "file size (bytes, log scale)", "accuracy-vs-size", "Accuracy vs size"))
    return [p for p in plots if p is not None]


def _point(point: dict, sweep: dict) -> dict:
    front = {(p["variant"], p["artifact"]) for p in sweep["pareto_front"]}
    return point | {"pareto": (point["variant"], point["artifact"]) in front}


def _scatter(points: list[dict], key: str, xlabel: str, plot_id: str, title: str) -> dict | None:
    if not points:
        return None
    artifacts = sorted({p["artifact"] for p in points})

    def draw():
        figure, ax = _figure()
        for index, name in enumerate(artifacts):
            mine = [p for p in points if p["artifact"] == name]
            ax.scatter([p[key] for p in mine], [p["top1"] * 100 for p in mine], s=40, color=_color(index), label=name,
                       zorder=3)  # fmt: skip
            front = [p for p in mine if p["pareto"]]
            ax.scatter([p[key] for p in front], [p["top1"] * 100 for p in front], s=110, facecolors="none",
                       edgecolors="black", zorder=4)  # fmt: skip
        _accuracy_axis(ax, [p["top1"] * 100 for p in points])
        if key == "bytes":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.legend(loc="lower right", fontsize=8)
        return figure

    caption = (
        "Each point is one artifact of one variant, coloured by artifact; outlined points are on the Pareto front."
    )
    return _plot(plot_id, title, caption, draw)


def _row(row: dict) -> list[str]:
    grid = ", ".join(f"{k}={v}" for k, v in row["grid"].items()) or "-"
    status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('error') or ''}"
    node = (row.get("node_id") or "-")[:8] + (f" ({row['node_ip']})" if row.get("node_ip") else "")
    figures = "; ".join(_artifact_text(a) for a in row.get("artifacts") or [])
    return [row["name"], grid, status, node, _time(row.get("bench_started")), _time(row.get("bench_finished")), figures]


def _artifact_text(artifact: dict) -> str:
    top1 = "-" if artifact["top1"] is None else f"{artifact['top1'] * 100:.2f}%"
    p50 = ", ".join(f"{t} {v:.3g}" for t, v in artifact["p50_ms"].items()) or "-"
    return f"{artifact['name']} {top1}, {human_bytes(artifact['bytes'])}, p50 {p50}"


def _time(seconds: float | None) -> str:
    return "-" if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
