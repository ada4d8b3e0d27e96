"""``simulate``'s side-by-side table: one column per config."""

from __future__ import annotations

from collections.abc import Sequence

from router.sim.result import JOBS, OUTCOMES, SYNC, Result
from router.sim.stats import LatencyHistogram


def _ms(h: LatencyHistogram, ps: Sequence[int] = (50, 95, 99)) -> str:
    if not h.count:
        return "-"
    return " / ".join(_duration(h.percentile(p) or 0.0) for p in ps)


def _duration(s: float) -> str:
    if s < 1.0:
        return f"{s * 1000:.1f}ms" if s < 0.1 else f"{s * 1000:.0f}ms"
    return f"{s:.1f}s" if s < 100 else f"{s / 60:.0f}m"


def _money(x: float) -> str:
    if x == 0:
        return "$0"
    return f"${x:,.2f}" if x >= 10 else f"${x:.4g}"


def table(results: Sequence[Result], title: str = "") -> str:
    """The numbers of every config side by side."""
    rows: list[tuple[str, list[str]]] = [("requests", [f"{r.requests:,}" for r in results])]
    for lane in OUTCOMES:
        rows.append((f"  {lane}", [f"{r.split()[lane]:.1%} ({r.outcomes[lane]:,})" for r in results]))
    rows.append(("deferred to a job lane", [f"{r.deferred:,}" for r in results]))
    rows.append(("shed + deferred", [f"{r.shed_and_deferred:,}" for r in results]))
    rows.append(("sync p50 / p95 / p99", [_ms(r.sync_latency()) for r in results]))
    for lane in SYNC:
        rows.append((f"  {lane}", [_ms(r.latency[lane]) for r in results]))
    for lane in JOBS:
        rows.append((f"  {lane} (to result)", [_ms(r.latency[lane]) for r in results]))
    rows.append(("deadline misses", [f"{r.deadline_miss_share:.2%} ({r.deadline_misses:,} of {r.with_deadline:,})"
                                     for r in results]))
    names = sorted({b for r in results for b in r.backends})
    for b in names:
        rows.append((f"backend {b}", ["" for _ in results]))
        rows.append(("  utilisation", [f"{r.backends[b].utilisation:.0%}" if b in r.backends else "-"
                                       for r in results]))
        rows.append(("  cold starts", [f"{r.backends[b].cold_starts:,}" if b in r.backends else "-"
                                       for r in results]))
        rows.append(("  cost", [_money(r.backends[b].cost) if b in r.backends else "-" for r in results]))
    rows.append(("cost per 1,000 requests", [_money(r.cost_per_1000) for r in results]))
    rows.append(("cost per day", [_money(r.cost_per_day) for r in results]))
    head = ["", *(r.name for r in results)]
    width0 = max(len(k) for k, _ in rows)
    widths = [max(len(head[i + 1]), *(len(v[i]) for _, v in rows)) for i in range(len(results))]
    lines = [title] if title else []
    lines.append("  ".join([" " * width0, *(h.rjust(w) for h, w in zip(head[1:], widths, strict=True))]))
    for key, values in rows:
        lines.append("  ".join([key.ljust(width0), *(v.rjust(w) for v, w in zip(values, widths, strict=True))]))
    return "\n".join(lines) + "\n"
