"""``rules``: the YAML face of routing. Ordered rules; the first whose ``when`` matches decides.

Matchers on the request: ``payload_bytes``, ``urgency``, ``priority``, ``caller``, ``content_type``,
``accepts_async``, ``deadline_ms``, ``has_deadline``. Matchers on the model's lanes, as
``<signal>.<lane>``: ``saturation``, ``inflight``, ``latency``, ``expected_latency``, ``error_rate``,
``cold``, ``available``, ``breaker``, ``queue_depth`` and ``expected_wait`` (this request's predicted
wait in the lane backend's admission queue, by its urgency). A number matcher is a value (equality) or a mapping of
``gt/gte/lt/lte/eq/ne``; sizes and durations take units. A lane the model lacks never matches.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, Literal

from pydantic import Field, RootModel

from router.config import Duration
from router.policy.errors import PolicyBuildError
from router.policy.params import LaneName, Params, Reason, RouteName, level
from router.types import BackendState, BreakerState, Decision, Lane, RequestFeatures, Snapshot
from router.units import parse_duration, parse_size

Predicate = Callable[[RequestFeatures, Snapshot], bool]
Check = Callable[..., bool]  # check(value_holder, _=None): a Predicate when the holder is the request
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}


class Rule(Params):
    when: dict[str, Any] = Field(default_factory=dict)
    route: RouteName
    backend: str | None = None  # a backend by name instead of the model's backend for the lane
    fallback: list[LaneName] = Field(default_factory=list)
    reason: Reason | None = None  # default: rule_<index>
    retry_after: Duration = 1.0  # for route: shed
    status: Literal[429, 503] = 429  # for route: shed


class RulesParams(RootModel[list[Rule]]):
    root: list[Rule] = Field(min_length=1)


def _number(parse: Callable[[Any], float]) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return parse(value)

    return convert


_SIZE = _number(parse_size)
_DURATION = _number(parse_duration)
_FLOAT = _number(float)

# name -> (kind, converter, getter); getters are C (attrgetter) where they can be: a decision runs dozens
_REQUEST: dict[str, tuple[str, Callable[[Any], Any], Callable[[RequestFeatures], Any]]] = {
    "payload_bytes": ("number", _SIZE, attrgetter("payload_bytes")),
    "priority": ("number", _FLOAT, attrgetter("priority")),
    "deadline_ms": ("number", _FLOAT, attrgetter("deadline_ms")),
    "urgency": ("choice", str, attrgetter("urgency")),
    "caller": ("choice", str, attrgetter("caller")),
    "content_type": ("choice", str, lambda r: r.content_type.partition(";")[0].strip().lower()),
    "accepts_async": ("flag", bool, attrgetter("accepts_async")),
    "has_deadline": ("flag", bool, lambda r: r.deadline_ms is not None),
}
_LANE: dict[str, tuple[str, Callable[[Any], Any], Callable[[BackendState], Any]]] = {
    "saturation": ("number", _FLOAT, attrgetter("saturation")),
    "inflight": ("number", _FLOAT, attrgetter("inflight")),
    "latency": ("number", _DURATION, attrgetter("latency_s")),
    "expected_latency": ("number", _DURATION, attrgetter("expected_latency_s")),
    "error_rate": ("number", _FLOAT, attrgetter("error_rate")),
    "cold": ("flag", bool, attrgetter("cold")),
    "available": ("flag", bool, attrgetter("available")),
    "breaker": ("choice", str, attrgetter("breaker.value")),
    "queue_depth": ("number", _FLOAT, attrgetter("queue_depth")),
    "expected_wait": ("number", _DURATION, lambda s: s.expected_wait_s),  # per request: see _predicate
}


LANE_SIGNALS: frozenset[str] = frozenset(_LANE)


def matcher_kind(key: str) -> tuple[str, Callable[[Any], Any]] | None:
    """A matcher's kind (number, choice, flag) and the converter of its values; None for an unknown matcher.
    For ``check``'s analysis of rules (router.config_checks)."""
    signal, _, lane = key.partition(".")
    entry = _REQUEST.get(key) if not lane else _LANE.get(signal)
    return (entry[0], entry[1]) if entry is not None else None


def _test(kind: str, convert: Callable[[Any], Any], spec: Any, path: tuple[str | int, ...],
          get: Callable[[Any], Any]) -> Check:
    """A test on the value ``get`` reads from its first argument, from its YAML spec: ``check(x, _)``, so a test
    on a request is a predicate itself. Reading and testing happen in one Python call (a decision runs dozens)."""
    try:
        if kind == "flag":
            if not isinstance(spec, bool):
                raise ValueError("expected true or false")

            def flag(x: Any, _: Any = None) -> bool:
                return get(x) is spec

            return flag
        if kind == "choice":
            options = [spec] if isinstance(spec, str) else spec
            if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
                raise ValueError("expected a string or a list of strings")
            allowed = frozenset(o.lower() if path[-1] == "content_type" else o for o in options)

            def choice(x: Any, _: Any = None) -> bool:
                return get(x) in allowed

            return choice
        if not isinstance(spec, dict):
            target = convert(spec)

            def equal(x: Any, _: Any = None) -> bool:
                v = get(x)
                return v is not None and bool(v == target)

            return equal
        if not spec:
            raise ValueError("expected at least one of gt, gte, lt, lte, eq, ne")
        checks = []
        for op, raw in spec.items():
            if op not in _OPS:
                raise PolicyBuildError(f"unknown comparison {op!r} (use gt, gte, lt, lte, eq, ne)", (*path, op))
            checks.append((_OPS[op], convert(raw)))
    except (ValueError, TypeError) as exc:
        raise PolicyBuildError(str(exc), path) from None
    if len(checks) == 1:  # the usual {gt: 6MB}: no generator per test
        (only, limit), = checks

        def compare(x: Any, _: Any = None) -> bool:
            v = get(x)
            return v is not None and only(v, limit)

        return compare

    def compare_all(x: Any, _: Any = None) -> bool:
        v = get(x)
        return v is not None and all(fn(v, t) for fn, t in checks)

    return compare_all


def _urgency_test(spec: Any, levels: Mapping[str, int], path: tuple[str | int, ...]) -> Predicate:
    if isinstance(spec, dict):  # urgency: {gte: high} compares priorities
        converted = {op: level(levels, str(v), (*path, op)) for op, v in spec.items()}
        return _test("number", _FLOAT, converted, path, attrgetter("priority"))
    for name in [spec] if isinstance(spec, str) else spec if isinstance(spec, list) else []:
        level(levels, str(name), path)
    return _test("choice", str, spec, path, attrgetter("urgency"))


def _same(value: Any) -> Any:
    return value


def _predicate(key: str, spec: Any, levels: Mapping[str, int], path: tuple[str | int, ...]) -> Predicate:
    if key == "urgency":
        return _urgency_test(spec, levels, path)
    if key in _REQUEST:
        kind, convert, get = _REQUEST[key]
        return _test(kind, convert, spec, path, get)
    signal, _, lane_name = key.partition(".")
    if signal in _LANE and lane_name in {lane.value for lane in Lane if lane is not Lane.SHED}:
        kind, convert, get_state = _LANE[signal]
        if signal == "breaker":
            states = [spec] if isinstance(spec, str) else spec if isinstance(spec, list) else []
            for st in states:
                if st not in {b.value for b in BreakerState}:
                    raise PolicyBuildError(f"unknown breaker state {st!r} (closed, open, half_open)", path)
        lane = Lane(lane_name)
        if signal == "expected_wait":
            test = _test(kind, convert, spec, path, _same)

            def wait_on_lane(r: RequestFeatures, s: Snapshot) -> bool:
                state = s.lane(lane)
                return state is not None and test(state.wait_for(r.priority))

            return wait_on_lane
        check = _test(kind, convert, spec, path, get_state)

        def on_lane(r: RequestFeatures, s: Snapshot) -> bool:
            name = s.lanes.get(lane)  # s.lane(lane), inlined
            state = None if name is None else s.backends.get(name)
            return state is not None and check(state)

        return on_lane
    known = sorted([*_REQUEST, *(f"{k}.<lane>" for k in _LANE)])
    guess = difflib.get_close_matches(key, [*_REQUEST, *(f"{k}.{lane.value}" for k in _LANE for lane in Lane
                                                          if lane is not Lane.SHED)], n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    raise PolicyBuildError(f"unknown matcher {key!r} ({hint}known: {', '.join(known)})", path)


class RulesPolicy:
    """Ordered rules, first match wins; abstains when no rule matches (a rule without ``when`` always does)."""

    Params = RulesParams

    def __init__(self, name: str, params: RulesParams, levels: Mapping[str, int]) -> None:
        self.name = name
        compiled: list[tuple[tuple[Predicate, ...], Decision]] = []
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for i, rule in enumerate(params.root):
            preds = []
            for key, spec in rule.when.items():
                try:
                    preds.append(_predicate(key, spec, levels, (i, "when", key)))
                except PolicyBuildError as exc:
                    problems += exc.issues
            if rule.route == "shed" and (rule.fallback or rule.backend):
                problems.append(((i, "route"), "a shed rule takes no fallback or backend"))
            decision = Decision(
                Lane(rule.route),
                reason=rule.reason or f"rule_{i}",
                backend=rule.backend,
                fallback=tuple(Lane(f) for f in rule.fallback),
                policy=name,
                retry_after_s=rule.retry_after if rule.route == "shed" else None,
                status=rule.status,
            )
            compiled.append((tuple(preds), decision))
        if problems:
            raise PolicyBuildError(problems[0][1], problems[0][0], issues=problems)
        self._rules = tuple(compiled)

    def decide(self, req: RequestFeatures, snap: Snapshot) -> Decision | None:
        for preds, decision in self._rules:
            for pred in preds:
                if not pred(req, snap):
                    break
            else:
                return decision
        return None
