"""``inference-router recommend``: sweep the knobs that matter through ``simulate`` on a trace, print the
cost-vs-latency Pareto front, write the cheapest config that meets the SLO.

Knobs: the shipped policy files' chains (``policies/``), which lanes each model uses, the real-time
instance count and the serverless max concurrency (and memory, where ``simulate.memory_speedup`` says
more memory is faster). First every policy x lane choice at the config's own capacity, plus a capacity grid
around the config as it is; then the capacity grid on the best policy and lanes. Candidates are changes
to the config's YAML (``${VAR}`` placeholders stay as they are) checked as ``inference-router check``
checks them, and simulated in parallel processes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from router.config import RouterConfig, parse_config
from router.sim.backends import ServiceTime
from router.sim.result import Result
from router.sim.run import Simulation
from router.sim.source import Source
from router.sim.trace import TraceStats
from router.yamlpos import ConfigError

_SLO = re.compile(r"^\s*p(\d{1,2}(?:\.\d+)?)\s*(<=|<)\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$")
SCALES = (0.5, 1.0, 2.0)  # capacity knobs: half, as configured, double
MEMORY_STEPS_MB = (1024, 2048, 3072, 4096, 5120, 6144)


@dataclass(frozen=True)
class Slo:
    """``pNN<=T`` on answered sync requests, with the most deadline misses and unanswered requests allowed."""

    percentile: float
    seconds: float
    strict: bool = False
    deadline_misses: float = 0.001
    max_rejected: float = 0.01

    def latency(self, r: Result) -> float:
        v = r.sync_latency().percentile(self.percentile)
        return math.inf if v is None else v

    def admissible(self, r: Result) -> bool:
        """Within the deadline-miss and unanswered limits (whatever its latency)."""
        return r.deadline_miss_share <= self.deadline_misses and r.rejected_share <= self.max_rejected

    def met(self, r: Result) -> bool:
        lat = self.latency(r)
        return (lat < self.seconds if self.strict else lat <= self.seconds) and self.admissible(r)

    def __str__(self) -> str:
        return f"p{self.percentile:g}{'<' if self.strict else '<='}{self.seconds * 1000:g}ms"


def parse_share(text: str) -> float:
    t = text.strip()
    value = float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r}: a share between 0 and 1 (or 0% and 100%)")
    return value


def parse_slo(text: str, deadline_misses: str = "0.1%", max_rejected: str = "1%") -> Slo:
    m = _SLO.match(text)
    if m is None:
        raise ValueError(f"--slo {text!r}: write it as pNN<=DURATION, e.g. 'p99<=300ms'")
    seconds = float(m.group(3)) * (0.001 if m.group(4) == "ms" else 1.0)
    return Slo(float(m.group(1)), seconds, m.group(2) == "<", parse_share(deadline_misses), parse_share(max_rejected))


@dataclass
class Candidate:
    name: str
    raw: dict[str, Any]
    result: Result | None = None
    error: str | None = None


# --- the knobs ------------------------------------------------------------------------------------


def _backends_of(raw: dict[str, Any], lane: str) -> set[str]:
    return {m["lanes"][lane] for m in raw.get("models", {}).values() if lane in m.get("lanes", {})}


def _is_serverless(b: dict[str, Any]) -> bool:
    return "serverless" in b


def with_capacity(raw: dict[str, Any], rt_scale: float, sls_scale: float) -> tuple[str, dict[str, Any]] | None:
    """Real-time instances (their router limit follows) and serverless max concurrency, scaled: what changed
    and the config; None when nothing would (one instance halved is still one)."""
    out = copy.deepcopy(raw)
    changes: list[str] = []
    backends = out.get("backends", {})
    for name in _backends_of(out, "realtime"):
        b = backends.get(name)
        if b is None or _is_serverless(b) or not isinstance(b.get("cost"), dict) or rt_scale == 1.0:
            continue
        cost = b["cost"]
        instances = int(cost.get("instances", 1))
        limit = b.get("max_concurrency", 8)
        sim = b.setdefault("simulate", {})
        per = int(sim.get("per_instance") or (max(1, int(limit) // max(1, instances)) if isinstance(limit, int) else 1))
        new = max(1, round(instances * rt_scale))
        if new == instances:
            continue
        changes.append(f"{name} {new} instance{'s' if new > 1 else ''}")
        cost["instances"] = new
        sim["per_instance"] = per
        if isinstance(limit, int):
            b["max_concurrency"] = per * new
    for name in _backends_of(out, "serverless"):
        b = backends.get(name)
        if b is None or not _is_serverless(b) or sls_scale == 1.0:
            continue
        limit = b.get("max_concurrency", 8)
        if not isinstance(limit, int):
            continue
        new = max(1, min(200, round(limit * sls_scale)))
        if new == limit:
            continue
        changes.append(f"{name} max concurrency {new}")
        b["max_concurrency"] = new
        b.setdefault("simulate", {})["max_concurrency"] = new
    return (", ".join(changes), out) if changes else None


def with_memory(raw: dict[str, Any], fitted: dict[str, ServiceTime], step: int) -> dict[str, Any] | None:
    """Serverless memory ``step`` sizes up, with the service time sped up as ``simulate.memory_speedup`` says;
    None when no serverless backend declares a speed-up (more memory would then only cost more)."""
    out = copy.deepcopy(raw)
    changed = False
    for name, b in out.get("backends", {}).items():
        sim, cost = b.get("simulate") or {}, b.get("cost") or {}
        k = float(sim.get("memory_speedup", 0.0) or 0.0)
        if not _is_serverless(b) or k <= 0.0 or not cost.get("memory_mb"):
            continue
        old = int(cost["memory_mb"])
        bigger = [m for m in MEMORY_STEPS_MB if m > old]
        if len(bigger) < step:
            continue
        new = bigger[step - 1]
        service = fitted.get(name)
        base = sim.get("service_time") or (service.p50 if service else None)
        if base is None:
            continue
        cost["memory_mb"] = new
        factor = (old / new) ** k
        b.setdefault("simulate", {})["service_time"] = f"{float(_seconds(base)) * factor * 1000:.3f}ms"
        changed = True
    return out if changed else None


def _seconds(value: Any) -> float:
    from router.units import parse_duration

    return parse_duration(value)


def lane_variants(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """All lanes as configured, and each model without its serverless lane, or without its realtime lane."""
    out = [("all lanes", copy.deepcopy(raw))]
    for drop in ("serverless", "realtime"):
        models = raw.get("models", {})
        if not any(drop in m.get("lanes", {}) and len(m.get("lanes", {})) > 1 for m in models.values()):
            continue
        variant = copy.deepcopy(raw)
        for m in variant["models"].values():
            lanes = m.get("lanes", {})
            if drop in lanes and len(lanes) > 1:
                del lanes[drop]
                m.get("limits", {}).pop(drop, None)
                if isinstance(m.get("default"), dict):
                    del m["default"]
        used = {b for m in variant["models"].values() for b in m.get("lanes", {}).values()}
        variant["backends"] = {n: b for n, b in variant.get("backends", {}).items() if n in used}
        out.append((f"no {drop}", variant))
    return out


def shipped_policy_files() -> list[Path]:
    """The policy files shipped in the checkout's ``policies/``."""
    d = Path(__file__).resolve().parents[2] / "policies"
    return sorted(p for p in d.glob("*.yaml") if p.is_file()) if d.is_dir() else []


def policy_variants(raw: dict[str, Any], files: Iterable[Path]) -> list[tuple[str, dict[str, Any]]]:
    """The config's own chain, and each policy file's chain (its first model's) applied to every model."""
    out = [("own policy", copy.deepcopy(raw))]
    for path in files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        models = doc.get("models") or {}
        if not models or not isinstance(doc.get("policies"), dict):
            continue
        chain = next(iter(models.values())).get("policy") or []
        prefix = path.stem
        variant = copy.deepcopy(raw)
        variant.setdefault("policies", {})
        for name, spec in doc["policies"].items():
            variant["policies"][f"{prefix}.{name}"] = spec
        for m in variant.get("models", {}).values():
            m["policy"] = [f"{prefix}.{p}" for p in chain]
        out.append((f"policy {prefix}", variant))
    return out


def structural(raw: dict[str, Any], files: Iterable[Path]) -> list[Candidate]:
    out = []
    for pname, praw in policy_variants(raw, files):
        for lname, lraw in lane_variants(praw):
            out.append(Candidate(f"{pname}, {lname}", lraw))
    return out


def capacity_grid(base: Candidate, fitted: dict[str, ServiceTime]) -> list[Candidate]:
    out: list[Candidate] = []
    for rt in SCALES:
        for sls in SCALES:
            changed = with_capacity(base.raw, rt, sls)
            if changed is not None and all(c.name != f"{base.name}, {changed[0]}" for c in out):
                out.append(Candidate(f"{base.name}, {changed[0]}", changed[1]))
    for step in (1, 2):
        bigger = with_memory(base.raw, fitted, step)
        if bigger is not None:
            out.append(Candidate(f"{base.name}, serverless memory +{step} GB", bigger))
    return out


# --- running --------------------------------------------------------------------------------------


def _simulate(args: tuple[str, str, str, dict[str, ServiceTime], int]) -> tuple[str, Result | None, str | None]:
    name, text, trace, fitted, seed = args
    try:
        cfg = parse_config(text, name, os.environ)
        stats = TraceStats()
        result = Simulation(cfg, name, fitted, seed).run(Source(trace=trace).requests(stats))
        return name, result, None
    except ConfigError as exc:
        return name, None, "; ".join(str(i) for i in exc.issues[:3])
    except ValueError as exc:
        return name, None, str(exc)


def evaluate(candidates: Sequence[Candidate], trace: str, fitted: dict[str, ServiceTime], seed: int,
             workers: int) -> None:
    jobs = [(c.name, yaml.safe_dump(c.raw, sort_keys=False), trace, fitted, seed) for c in candidates]
    by_name = {c.name: c for c in candidates}
    if workers <= 1:
        outcomes: Iterable[tuple[str, Result | None, str | None]] = map(_simulate, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        outcomes = pool.map(_simulate, jobs)
    for name, result, error in outcomes:
        by_name[name].result, by_name[name].error = result, error
    if workers > 1:
        pool.shutdown()


def pareto(candidates: Sequence[Candidate], slo: Slo) -> list[Candidate]:
    """Of the candidates within the deadline-miss and unanswered limits, those no other is both cheaper (or as
    cheap) and faster than: by cost per day, then latency. The cheapest meeting the SLO is one of them."""
    done = sorted((c.result.cost_per_day, slo.latency(c.result), i, c) for i, c in enumerate(candidates)
                  if c.result is not None and slo.admissible(c.result))
    front: list[Candidate] = []
    best = math.inf
    for _, lat, _, c in done:
        if lat < best:
            front.append(c)
            best = lat
    return front


def recommend(raw: dict[str, Any], trace: str, slo: Slo, fitted: dict[str, ServiceTime], seed: int = 1,
              workers: int = 2, files: Iterable[Path] | None = None) -> tuple[list[Candidate], Candidate | None]:
    """Every candidate simulated, and the cheapest that meets ``slo`` (None if none does)."""
    files = list(shipped_policy_files() if files is None else files)
    first = structural(raw, files)
    own = first[0]
    first += capacity_grid(own, fitted)
    evaluate(first, trace, fitted, seed, workers)
    meeting = [c for c in first if c.result is not None and slo.met(c.result)]
    shapes = [c for c in first[: len(structural(raw, files))] if c.result is not None]
    if meeting:
        best_shape = min((c for c in shapes if c in meeting), key=lambda c: c.result.cost_per_day,  # type: ignore[union-attr]
                         default=None)
    else:
        best_shape = min(shapes, key=lambda c: slo.latency(c.result), default=None)  # type: ignore[arg-type]
    everyone = list(first)
    if best_shape is not None and best_shape is not own:
        names = {c.name for c in everyone}
        second = [c for c in capacity_grid(best_shape, fitted) if c.name not in names]
        evaluate(second, trace, fitted, seed, workers)
        everyone += second
    scored = [(c.result.cost_per_day, slo.latency(c.result), i, c) for i, c in enumerate(everyone)
              if c.result is not None and slo.met(c.result)]
    return everyone, min(scored)[3] if scored else None


def _row(c: Candidate, slo: Slo) -> str:
    r = c.result
    assert r is not None
    lat = slo.latency(r)
    mark = "meets" if slo.met(r) else "misses"
    return (f"  ${r.cost_per_day:>10,.2f}/day  p{slo.percentile:g} {lat * 1000:>9.1f}ms  deadline misses "
            f"{r.deadline_miss_share:6.2%}  unanswered {r.rejected_share:6.2%}  {mark}  {c.name}")


def recommend_command(args: argparse.Namespace, named: tuple[str, RouterConfig]) -> int:
    path = (args.config or [os.environ.get("ROUTER_CONFIG", "")])[0]
    try:
        slo = parse_slo(args.slo, args.deadline_misses, args.max_rejected)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if not Path(args.trace).is_file():
        sys.stderr.write(f"--trace {args.trace}: no such file\n")
        return 2
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    fitted = Source(trace=args.trace).fitted()
    everyone, best = recommend(raw, args.trace, slo, fitted, args.seed, args.workers)
    failed = [c for c in everyone if c.result is None]
    front = pareto(everyone, slo)
    if args.json:
        doc = {"slo": str(slo), "candidates": [
            {"name": c.name, "error": c.error, "on_front": c in front,
             "meets": c.result is not None and slo.met(c.result),
             "result": c.result.to_json() if c.result else None} for c in everyone],
            "recommended": best.name if best else None, "written": args.out if best else None}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(f"{len(everyone)} candidate configs simulated on {args.trace} "
                         f"({len(failed)} not valid); SLO {slo}, deadline misses <= {slo.deadline_misses:.2%}, "
                         f"unanswered <= {slo.max_rejected:.2%}\n\ncost vs latency, Pareto front:\n")
        for c in front:
            sys.stdout.write(_row(c, slo) + "\n")
    if best is None:
        sys.stderr.write("no candidate meets the SLO: the front above shows the trade-off; loosen the SLO or add "
                         "capacity to the config\n")
        return 1
    text = (f"# Recommended by `inference-router recommend` for {args.trace}: {best.name}\n"
            f"# SLO {slo}; simulated {_row(best, slo).strip()}\n" + yaml.safe_dump(best.raw, sort_keys=False))
    try:
        parse_config(text, args.out, os.environ)
    except ConfigError as exc:  # pragma: no cover - candidates were checked when simulated
        sys.stderr.write(f"the recommended config does not pass check:\n{exc}\n")
        return 1
    Path(args.out).write_text(text, encoding="utf-8")
    if not args.json:
        sys.stdout.write(f"\ncheapest that meets the SLO: {best.name}\n{_row(best, slo)}\nwritten to {args.out}\n")
    return 0
