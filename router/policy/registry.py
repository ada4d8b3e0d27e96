"""Policy types by name: the built-ins, registered here explicitly, plus the entry-point group
``inference_router.policies`` for third-party policies.

A policy type is a class with a pydantic ``Params`` model and ``__init__(name, params, levels)``,
where ``levels`` maps urgency names to priorities. It raises ``PolicyBuildError`` for params that
are well-formed but wrong (e.g. an unknown urgency level), so ``check`` can point at the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

from pydantic import BaseModel, RootModel

from router.policy.deadline import DeadlinePolicy
from router.policy.errors import PolicyBuildError
from router.policy.rules import RulesPolicy
from router.policy.shed import ShedPolicy
from router.policy.weighted import WeightedPolicy
from router.types import Policy

__all__ = ["PolicyBuildError", "PolicyType", "build_policy", "policy_types"]

ENTRY_POINT_GROUP = "inference_router.policies"


class PolicyType(Protocol):
    @property
    def Params(self) -> type[BaseModel]: ...  # the class attribute of every policy type

    def __call__(self, name: str, params: Any, levels: Mapping[str, int]) -> Policy: ...


BUILTINS: dict[str, PolicyType] = {
    "rules": RulesPolicy,
    "shed": ShedPolicy,
    "deadline": DeadlinePolicy,
    "weighted": WeightedPolicy,
}


@cache
def policy_types() -> dict[str, PolicyType]:
    """Built-ins plus installed plugins; a plugin cannot replace a built-in."""
    types = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in types:
            types[ep.name] = ep.load()
    return types


def build_policy(name: str, type_name: str, raw_params: Any, levels: Mapping[str, int]) -> Policy:
    """Validate params and build one policy; raises PolicyBuildError or pydantic's ValidationError."""
    types = policy_types()
    cls = types.get(type_name)
    if cls is None:
        known = ", ".join(sorted(types))
        raise PolicyBuildError(f"unknown policy type {type_name!r} (known: {known})", unknown_type=True)
    params_model = cls.Params
    if raw_params is None and not issubclass(params_model, RootModel):
        raw_params = {}
    params = params_model.model_validate(raw_params)
    return cls(name, params, levels)
