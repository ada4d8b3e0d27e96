"""``simulate --html``: one self-contained HTML file, the table and four charts as embedded PNGs.

Charts are drawn by matplotlib (``Figure`` without pyplot: no global state, no display) and embedded as
base64, so the file opens anywhere without a network and the same PNGs serve the README.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.sim.result import JOBS, OUTCOMES, SYNC, Result
from router.sim.text import table

CHARTS = ("latency_cdf", "lane_split", "cost", "queues")
_LANE_COLOURS = {"realtime": "#1f77b4", "serverless": "#ff7f0e", "async": "#2ca02c", "batch": "#9467bd",
                 "shed": "#d62728", "failed": "#8c564b", "rejected": "#7f7f7f"}
_STYLES = ("-", "--", ":", "-.")


def _figure(rows: int = 1, width: float = 9.0, height: float = 4.0) -> tuple[Any, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - the report extra is part of dev
        raise SystemExit("the HTML report needs matplotlib: pip install 'inference-router[report]'") from None
    fig = Figure(figsize=(width, height * rows), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)
    return fig, [a[0] for a in axes]


def _minutes(results: Sequence[Result]) -> tuple[float, str]:
    span = max((r.span_s for r in results), default=0.0)
    return (60.0, "minutes") if span > 600 else (1.0, "seconds")


def latency_cdf(results: Sequence[Result]) -> Any:
    fig, (ax,) = _figure()
    for i, r in enumerate(results):
        for lane in (*SYNC, *JOBS):
            h = r.latency[lane]
            if not h.count:
                continue
            xs, ys = zip(*h.cdf(), strict=True)
            ax.step(xs, ys, where="post", color=_LANE_COLOURS[lane], linestyle=_STYLES[i % len(_STYLES)],
                    label=f"{r.name}: {lane} ({h.count:,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (seconds, log scale); job lanes: until the result is ready")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF per lane")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def lane_split(results: Sequence[Result]) -> Any:
    fig, axes = _figure(len(results), height=3.0)
    unit, label = _minutes(results)
    for ax, r in zip(axes, results, strict=True):
        s = r.series
        xs = [t / unit for t in s.times()]
        cols = [s.column(k) for k in OUTCOMES]
        totals = [sum(c[i] for c in cols) or 1.0 for i in range(len(xs))]
        shares = [[c[i] / totals[i] for i in range(len(xs))] for c in cols]
        if xs:
            ax.stackplot(xs, shares, labels=list(OUTCOMES), colors=[_LANE_COLOURS[k] for k in OUTCOMES],
                         step="post")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of arrivals")
        ax.set_title(f"Lane split over time: {r.name}")
        ax.legend(fontsize="small", loc="upper left", ncols=4)
    axes[-1].set_xlabel(label)
    return fig


def cost(results: Sequence[Result]) -> Any:
    fig, (ax,) = _figure()
    unit, label = _minutes(results)
    for i, r in enumerate(results):
        s = r.series
        running, total = [], 0.0
        for c in s.column("cost"):
            total += c
            running.append(total)
        ax.plot([t / unit for t in s.times()], running, linestyle=_STYLES[i % len(_STYLES)],
                label=f"{r.name}: ${r.cost:,.4g} (${r.cost_per_day:,.2f}/day)")
    ax.set_xlabel(label)
    ax.set_ylabel("cumulative cost ($)")
    ax.set_title("Cost over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def queues(results: Sequence[Result]) -> Any:
    fig, (ax,) = _figure()
    unit, label = _minutes(results)
    names = {"queue_depth": "waiting for a slot", "jobs_queued": "async jobs queued",
             "batch_buffered": "batch records buffered"}
    for i, r in enumerate(results):
        s = r.series
        xs = [t / unit for t in s.times()]
        for col, what in names.items():
            ys = s.column(col)
            if any(ys):
                ax.step(xs, ys, where="post", linestyle=_STYLES[i % len(_STYLES)], label=f"{r.name}: {what}")
    ax.set_xlabel(label)
    ax.set_ylabel("peak depth per interval")
    ax.set_title("Queue depth")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig


_DRAW = {"latency_cdf": latency_cdf, "lane_split": lane_split, "cost": cost, "queues": queues}


def png(name: str, results: Sequence[Result]) -> bytes:
    """One chart as PNG bytes."""
    fig = _DRAW[name](results)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=90)
    return out.getvalue()


def save_charts(directory: str | Path, results: Sequence[Result], prefix: str = "") -> list[Path]:
    """Every chart as a PNG file in ``directory`` (for documentation)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in CHARTS:
        path = d / f"{prefix}{name}.png"
        path.write_bytes(png(name, results))
        paths.append(path)
    return paths


def render(results: Sequence[Result], source: str) -> str:
    """The report as one HTML document."""
    images = "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png(name, results)).decode()}">'
        f"</figure>" for name in CHARTS)
    data = html.escape(json.dumps([r.to_json() for r in results], indent=1))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>inference-router simulation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}}pre{{background:#f6f6f6;padding:1em;
overflow-x:auto}}img{{max-width:100%}}figure{{margin:1em 0}}</style></head>
<body><h1>Simulation: {html.escape(", ".join(r.name for r in results))}</h1>
<p>{html.escape(source)}. Every request went through the router's own features, policy engine, tracker and
sync walk on a virtual clock; backends are models.</p>
<h2>Side by side</h2><pre id="table">{html.escape(table(results))}</pre>
<h2>Charts</h2>
{images}
<h2>Data</h2><details><summary>JSON</summary><pre id="json">{data}</pre></details>
</body></html>
"""


def write_report(path: str | Path, results: Sequence[Result], source: str) -> None:
    Path(path).write_text(render(results, source), encoding="utf-8")
