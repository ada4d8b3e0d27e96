"""What ``check`` finds beyond the schema.

Errors (the config cannot work): a lane whose payload limit is above what its backend's kind accepts
(a SageMaker real-time endpoint takes 6 MB, a serverless one 4 MB, Async Inference 1 GB), and a rule naming
a backend the config does not have.

Warnings (the config works, but not as written; ``check --strict`` fails on them): a ``rules`` rule that can
never match (contradictory bounds, a value out of range, a lane the model lacks, an earlier rule that matches
everything it matches), a rule routing to a lane the model lacks, a policy never consulted, a lane nothing
routes to, and a serverless lane that starts cold while every route to it needs it warm.

Rules are analysed per model, as sets of requests: each matcher is a set of values (an interval of numbers,
a set of names or flags) within what the model can see (its levels, tenants, payload limit, lanes), so
"never matches" is an empty set and "shadowed" is a subset of an earlier rule's set. Matchers are taken as
independent of each other, so the analysis warns only when it is sure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from router.units import format_size, parse_size
from router.yamlpos import ConfigIssue, Located, Path, format_path

SAGEMAKER_REALTIME_MAX = 6_000_000  # InvokeEndpoint's payload limit
SAGEMAKER_SERVERLESS_MAX = 4_000_000
SAGEMAKER_ASYNC_MAX = 1_000_000_000  # InvokeEndpointAsync, through S3
_DEFAULT_LIMITS = {"realtime": 6_000_000, "serverless": 4_000_000, "async": 1_000_000_000, "batch": 100_000_000}
_SYNC = ("realtime", "serverless")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _size(value: Any) -> int | None:
    try:
        return parse_size(value)
    except ValueError:
        return None


def backend_payload_cap(backend: Mapping[str, Any]) -> tuple[int, str] | None:
    """The largest payload a backend of this kind accepts in one call, and what it is; None: no known cap."""
    kind = backend.get("kind")
    if kind == "sagemaker":
        if backend.get("serverless") is not None:
            return SAGEMAKER_SERVERLESS_MAX, "a SageMaker serverless endpoint takes at most 4MB per call"
        return SAGEMAKER_REALTIME_MAX, "a SageMaker real-time endpoint (InvokeEndpoint) takes at most 6MB per call"
    if kind == "sagemaker-async":
        return SAGEMAKER_ASYNC_MAX, "SageMaker Async Inference takes at most 1GB per invocation"
    return None


def semantic_errors(data: Mapping[str, Any], located: Located, file: str) -> list[ConfigIssue]:
    """Payload limits above what a lane's backend takes, and rules naming unknown backends (raw YAML, so they
    are reported beside every other error)."""
    out: list[ConfigIssue] = []

    def issue(path: Path, message: str) -> None:
        line, col = located.position(path)
        out.append(ConfigIssue(file, line, col, format_path(path), message))

    backends = _mapping(data.get("backends"))
    max_body = _size(_mapping(data.get("server")).get("max_body", "1GiB")) or 1024**3
    for model_name, raw_model in _mapping(data.get("models")).items():
        model = _mapping(raw_model)
        base: Path = ("models", model_name)
        limits = _mapping(model.get("limits"))
        for lane, backend_name in _mapping(model.get("lanes")).items():
            backend = backends.get(backend_name) if isinstance(backend_name, str) else None
            cap = backend_payload_cap(backend) if isinstance(backend, dict) else None
            if cap is None or lane not in _DEFAULT_LIMITS:
                continue
            most, what = cap
            if lane == "batch":  # the router's runner sends mini-batches of at most batch.max_payload
                batch = _mapping(model.get("batch"))
                payload = _size(batch.get("max_payload", 6_000_000))
                if payload is not None and payload > most:
                    where = (*base, "batch", "max_payload") if "max_payload" in batch else (*base, "lanes", lane)
                    issue(where, f"the batch lane sends mini-batches of up to {format_size(payload)} (batch."
                          f"max_payload) to backend {backend_name!r}, but {what}: set batch.max_payload to "
                          f"{format_size(most)} or less")
                continue
            explicit = lane in limits
            limit = _size(limits[lane]) if explicit else _DEFAULT_LIMITS[lane]
            if limit is None or min(limit, max_body) <= most:
                continue
            if explicit:
                issue((*base, "limits", lane), f"the {lane} lane takes payloads up to {format_size(limit)}, but its "
                      f"backend {backend_name!r} refuses them above {format_size(most)}: {what}")
            else:
                issue((*base, "lanes", lane), f"the {lane} lane's limit is {format_size(limit)} (the default), but "
                      f"backend {backend_name!r} refuses payloads above {format_size(most)}: {what}; set limits."
                      f"{lane}: {format_size(most)}" + (" or give the async lane a sagemaker-async backend"
                                                        if lane == "async" else ""))
    for policy_name, raw_policy in _mapping(data.get("policies")).items():
        policy = _mapping(raw_policy)
        params = policy.get("params")
        if policy.get("type") != "rules" or not isinstance(params, list):
            continue
        for i, rule in enumerate(params):
            backend_name = _mapping(rule).get("backend")
            if isinstance(backend_name, str) and backend_name not in backends:
                issue(("policies", policy_name, "params", i, "backend"), f"unknown backend {backend_name!r}")
    return out


# --- the sets of requests a rule matches -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Numbers: an interval, points left out (``ne``), and whether "no value" is in the set (no deadline)."""

    lo: float = -math.inf
    lo_open: bool = False
    hi: float = math.inf
    hi_open: bool = False
    excluded: frozenset[float] = frozenset()
    none: bool = False

    def _no_numbers(self) -> bool:
        if self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open)):
            return True
        return self.lo == self.hi and self.lo in self.excluded

    def empty(self) -> bool:
        return self._no_numbers() and not self.none

    def __and__(self, other: Span) -> Span:
        lo, lo_open = max((self.lo, self.lo_open), (other.lo, other.lo_open))
        hi, hi_open = min((self.hi, not self.hi_open), (other.hi, not other.hi_open))
        return Span(lo, lo_open, hi, not hi_open, self.excluded | other.excluded, self.none and other.none)

    def _contains(self, x: float) -> bool:
        above = x > self.lo or (x == self.lo and not self.lo_open)
        below = x < self.hi or (x == self.hi and not self.hi_open)
        return above and below and x not in self.excluded

    def within(self, other: Span) -> bool:
        if self.none and not other.none:
            return False
        if self._no_numbers():
            return True
        lo_ok = self.lo > other.lo or (self.lo == other.lo and (self.lo_open or not other.lo_open))
        hi_ok = self.hi < other.hi or (self.hi == other.hi and (self.hi_open or not other.hi_open))
        return lo_ok and hi_ok and all(not self._contains(x) for x in other.excluded)


@dataclass(frozen=True, slots=True)
class Choice:
    """Names or flags: a set of values; None stands for any value (content types)."""

    values: frozenset[Any] | None

    def empty(self) -> bool:
        return self.values is not None and not self.values

    def __and__(self, other: Choice) -> Choice:
        if self.values is None or other.values is None:
            return self if other.values is None else other
        return Choice(self.values & other.values)

    def within(self, other: Choice) -> bool:
        return other.values is None or (self.values is not None and self.values <= other.values)


Domain = Span | Choice
_FULL = Span(0.0)
_RATIO = Span(0.0, False, 1.0)


def _span(spec: Any, convert: Any) -> Span:
    if not isinstance(spec, dict):
        value = float(convert(spec))
        return Span(value, False, value)
    out = Span()
    for op, raw in spec.items():
        v = float(convert(raw))
        out = out & {"gt": Span(v, True), "gte": Span(v), "lt": Span(hi=v, hi_open=True), "lte": Span(hi=v),
                     "eq": Span(v, False, v), "ne": Span(excluded=frozenset({v}))}[op]
    return out


@dataclass(frozen=True)
class View:
    """What one model's rules can see: the values each matcher can take (its universe)."""

    levels: Mapping[str, int]
    lanes: Mapping[str, str]  # lane -> backend
    universe: Mapping[str, Domain]
    cold: str | None = None  # the lane assumed cold

    def matcher(self, key: str, spec: Any) -> tuple[str, Domain] | str:
        """(the key it constrains, its set), or why it never matches."""
        from router.policy.rules import matcher_kind

        lane = key.partition(".")[2]
        if lane and lane not in self.lanes:
            return f"the model has no {lane} lane ({key})"
        if key in ("urgency", "priority"):
            return "urgency", Choice(frozenset(self._levels(key, spec)))
        if key == "has_deadline":
            return "deadline_ms", Span(1.0, False, math.inf) if spec else Span(1.0, False, 0.0, none=True)
        kind_convert = matcher_kind(key)
        if kind_convert is None:
            return key, Choice(None)
        kind, convert = kind_convert
        if kind == "number":
            return key, _span(spec, convert)
        if kind == "flag":
            return key, Choice(frozenset({spec}))
        options = [spec] if isinstance(spec, str) else list(spec)
        return key, Choice(frozenset(o.lower() if key == "content_type" else o for o in options))

    def _levels(self, key: str, spec: Any) -> set[str]:
        if key == "priority":
            span = _span(spec, float)
            return {name for name, p in self.levels.items() if Span(p, False, p).within(span)}
        if isinstance(spec, dict):
            span = _span({op: self.levels[str(v)] for op, v in spec.items()}, float)
            return {name for name, p in self.levels.items() if Span(p, False, p).within(span)}
        return {spec} if isinstance(spec, str) else set(spec)

    def requests(self, when: Mapping[str, Any]) -> dict[str, Domain] | str:
        """The requests a ``when`` matches, key by key within the universe; or why there are none."""
        out = dict(self.universe)
        for key, spec in when.items():
            found = self.matcher(key, spec)
            if isinstance(found, str):
                return found
            name, domain = found
            within = out.get(name, domain)
            both = within & domain  # type: ignore[operator]
            if both.empty():
                return _never(key, spec, within, domain, within != self.universe.get(name, within))
            out[name] = both
        return out


def _never(key: str, spec: Any, universe: Domain, domain: Domain, narrowed: bool) -> str:
    if key in ("urgency", "priority") and domain.empty():
        return f"{key}: no urgency level is {spec}"
    if domain.empty():
        return f"{key}: {spec} contradicts itself"
    if narrowed:
        return f"{key}: {spec} contradicts the rule's other matchers"
    if key.startswith("cold.") and isinstance(universe, Choice) and universe.values == frozenset({False}):
        return f"{key}: its backend has no serverless block, so it is never cold"
    if key == "caller":
        return f"caller: {spec} names no tenant of the config's callers (nor anonymous)"
    if key == "payload_bytes" and isinstance(universe, Span):
        return f"payload_bytes: {spec} is above the model's largest payload ({format_size(int(universe.hi))})"
    return f"{key}: {spec} is outside what it can be"


def _within(a: Mapping[str, Domain], b: Mapping[str, Domain]) -> bool:
    return all(dom.within(b[k]) for k, dom in a.items() if k in b)  # type: ignore[arg-type]


# --- the walk over a model's chain ---------------------------------------------------------------------


@dataclass
class Walk:
    """What one pass over a model's chain found: lanes reached, rules and policies that never decide."""

    reached: set[str] = field(default_factory=set)
    dead_rules: list[tuple[str, int, str]] = field(default_factory=list)  # (policy, rule, why)
    bad_routes: list[tuple[str, int, str]] = field(default_factory=list)
    unconsulted: list[tuple[int, str, str]] = field(default_factory=list)  # (chain index, policy, why)
    decider: str | None = None  # the first rule that decides every request, as "rule N of policy P"


def _walk(cfg: Any, model_name: str, view: View) -> Walk:
    from router.policy.deadline import DeadlineParams
    from router.policy.rules import RulesParams

    model = cfg.models[model_name]
    limits = {lane: model.limit(_lane(lane)) for lane in model.lanes}
    max_payload = view.universe["payload_bytes"]
    walk = Walk()
    for j, policy_name in enumerate(model.policy):
        if walk.decider is not None:
            walk.unconsulted.append((j, policy_name, walk.decider))
            continue
        policy = cfg.policies[policy_name]
        if policy.type == "deadline":
            lanes = [lane for lane in DeadlineParams.model_validate(policy.params or {}).lanes if lane in model.lanes]
            # a cold lane gets a request from the deadline policy only when the lanes before it would miss
            walk.reached.update(lanes if view.cold is None else lanes[:1])
            continue
        if policy.type == "shed":
            continue
        if policy.type != "rules":  # a plugin: it may route anywhere
            walk.reached.update(model.lanes)
            continue
        try:
            rules = RulesParams.model_validate(policy.params).root
        except ValidationError:
            continue
        live: list[tuple[int, dict[str, Domain]]] = []
        for i, rule in enumerate(rules):
            matched = view.requests(rule.when)
            if isinstance(matched, str):
                walk.dead_rules.append((policy_name, i, f"it can never match: {matched}"))
                continue
            shadow = next((k for k, earlier in live if _within(matched, earlier)), None)
            if shadow is not None:
                walk.dead_rules.append((policy_name, i, f"rule {shadow} before it matches every request it "
                                                        "matches"))
                continue
            live.append((i, matched))
            route = [rule.route, *rule.fallback]
            if rule.route != "shed" and rule.route not in model.lanes:
                walk.bad_routes.append((policy_name, i, rule.route))
                continue
            payload = matched["payload_bytes"]
            smallest = payload.lo if isinstance(payload, Span) else 0.0
            walk.reached.update(lane for lane in route if lane in model.lanes and limits[lane] >= smallest)
            if walk.decider is None and _within(view.universe, matched) and _covers(rule.route, rule.fallback,
                                                                                   limits, max_payload):
                walk.decider = f"rule {i} of policy {policy_name!r} decides every request"
    if walk.decider is None:  # every policy may abstain: the default route, or any lane the payload fits
        default = model.default_route()
        walk.reached.update(lane for lane in [default.lane, *default.fallback] if lane in model.lanes)
        biggest = max((limits[lane] for lane in [default.lane, *default.fallback] if lane in limits), default=0)
        walk.reached.update(lane for lane in model.lanes if limits[lane] > biggest and lane in _SYNC)
    if any(lane in model.lanes for lane in _SYNC):  # a job lane also takes what the sync lanes cannot (deferral)
        if "async" in model.lanes:
            walk.reached.add("async")
        elif "batch" in model.lanes:
            walk.reached.add("batch")
    return walk


def _covers(lane: str, fallback: Iterable[str], limits: Mapping[str, int], payload: Domain) -> bool:
    """Whether a route takes every payload the model takes, whoever asks: a shed, or a sync lane big enough."""
    if lane == "shed":
        return True
    if lane not in limits:
        return False
    most = payload.hi if isinstance(payload, Span) else math.inf
    return any(lane in limits and lane in _SYNC and limits[lane] >= most for lane in [lane, *fallback])


def _lane(name: str) -> Any:
    from router.types import Lane

    return Lane(name)


def _universe(cfg: Any, model_name: str, cold: str | None) -> dict[str, Domain]:
    model = cfg.models[model_name]
    tenants = frozenset({c.tenant for c in cfg.callers} | {"anonymous"})
    largest = max((model.limit(_lane(lane)) for lane in model.lanes), default=0)
    out: dict[str, Domain] = {
        "payload_bytes": Span(0.0, False, float(min(cfg.server.max_body, largest))),
        "urgency": Choice(frozenset(cfg.urgency.levels)),
        "deadline_ms": Span(1.0, False, math.inf, none=True),
        "accepts_async": Choice(frozenset({True, False})),
        "caller": Choice(tenants),
        "content_type": Choice(None),
    }
    for lane, backend_name in model.lanes.items():
        serverless = getattr(cfg.backends[backend_name], "serverless", None) is not None
        for signal in ("inflight", "latency", "expected_latency", "queue_depth", "expected_wait"):
            out[f"{signal}.{lane}"] = _FULL
        out[f"saturation.{lane}"] = out[f"error_rate.{lane}"] = _RATIO
        out[f"cold.{lane}"] = Choice(frozenset({True, False}) if serverless else frozenset({False}))
        out[f"available.{lane}"] = Choice(frozenset({True, False}))
        out[f"breaker.{lane}"] = Choice(frozenset({"closed", "open", "half_open"}))
    if cold is not None:  # a cold backend has nothing in flight
        out[f"cold.{cold}"] = Choice(frozenset({True}))
        out[f"inflight.{cold}"] = Span(0.0, False, 0.0)
    return out


def config_warnings(cfg: Any, located: Located, file: str) -> list[ConfigIssue]:
    """Rules, policies, lanes and backends of a valid config that never serve anything (see the module doc)."""
    out: dict[str, ConfigIssue] = {}

    def warn(path: Path, message: str) -> None:
        line, col = located.position(path)
        issue = ConfigIssue(file, line, col, format_path(path), message, "warning")
        out.setdefault(str(issue), issue)

    used_policies: set[str] = set()
    used_backends: set[str] = set()
    for name, model in cfg.models.items():
        used_policies.update(model.policy)
        used_policies.update(model.shadow)  # a shadow chain decides on every request too
        used_backends.update(model.lanes.values())
        view = View(cfg.urgency.levels, model.lanes, _universe(cfg, name, None))
        walk = _walk(cfg, name, view)
        for policy_name, i, why in walk.dead_rules:
            warn(("policies", policy_name, "params", i), f"rule {i} never decides for model {name!r}: {why}")
        for policy_name, i, lane in walk.bad_routes:
            warn(("policies", policy_name, "params", i, "route"), f"rule {i} routes to the {lane} lane, which model "
                 f"{name!r} does not have: the engine skips the policy's decision (router_policy_skips_total)")
        for j, policy_name, why in walk.unconsulted:
            warn(("models", name, "policy", j), f"policy {policy_name!r} is never consulted: {why}")
        if walk.decider is not None and model.default is not None:
            warn(("models", name, "default"), f"the default route never applies: {walk.decider}")
        for lane, backend_name in model.lanes.items():
            if lane not in walk.reached:
                warn(("models", name, "lanes", lane), f"nothing routes to the {lane} lane (backend "
                     f"{backend_name!r}): no rule, fallback, deadline policy or default route names it")
                continue
            if getattr(cfg.backends[backend_name], "serverless", None) is None or lane not in _SYNC:
                continue
            cold = _walk(cfg, name, View(cfg.urgency.levels, model.lanes, _universe(cfg, name, lane), cold=lane))
            if lane not in cold.reached:
                why = f": {cold.decider} while it is cold" if cold.decider else ""
                warn(("models", name, "lanes", lane), f"the {lane} lane (backend {backend_name!r}) starts cold and "
                     f"nothing routes to it while it is cold{why}, so it never warms up")
    for policy_name, policy in cfg.policies.items():
        if policy_name not in used_policies:
            warn(("policies", policy_name), f"policy {policy_name!r} is in no model's chain")
        for rule in (policy.params if policy.type == "rules" and isinstance(policy.params, list) else []):
            backend = _mapping(rule).get("backend")
            if isinstance(backend, str):
                used_backends.add(backend)
    for backend_name in cfg.backends:
        if backend_name not in used_backends:
            warn(("backends", backend_name), f"backend {backend_name!r} serves no model's lane")
    return sorted(out.values(), key=lambda i: (i.line, i.col, i.message))
