"""Pieces shared by the built-in policies' params models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.policy.errors import PolicyBuildError
from router.types import Lane

SyncLaneName = Literal["realtime", "serverless"]
SYNC_LANE_NAMES: tuple[SyncLaneName, ...] = ("realtime", "serverless")
LaneName = Literal["realtime", "serverless", "async", "batch"]
RouteName = Literal["realtime", "serverless", "async", "batch", "shed"]
Reason = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]  # a metric label: keep it small


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def level(levels: Mapping[str, int], name: str, path: tuple[str | int, ...]) -> int:
    """The priority of an urgency level, or a PolicyBuildError naming the known ones."""
    if name not in levels:
        raise PolicyBuildError(f"unknown urgency level {name!r} (levels: {', '.join(levels)})", path)
    return levels[name]


def lanes(names: Sequence[str]) -> tuple[Lane, ...]:
    return tuple(Lane(n) for n in names)
