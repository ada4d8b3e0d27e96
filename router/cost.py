"""What backends cost: the price table, each backend's billing, and the arithmetic shared by live serving
(``router_estimated_cost_dollars_total``) and the simulator.

Billing follows SageMaker's: real-time endpoints (and plain HTTP servers given a ``cost`` block) by the
instance-hour whether busy or not; serverless endpoints by GB-second of each call, plus provisioned
concurrency by the second while configured; async endpoints by the instance-hour of the instances running
(they scale to zero when idle); Batch Transform by the instance-hours of each job, start-up included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib.resources import files
from typing import Any

from router.config import BackendConfig, RouterConfig, SageMakerAsyncBackendConfig, SageMakerBatchBackendConfig

HOUR = 3600.0
DAY = 86400.0


class Billing(StrEnum):
    INSTANCES = "instances"  # always on: instances x hourly
    SERVERLESS = "serverless"  # memory x duration of each call
    ASYNC = "async"  # instances x hourly while any run; scales to zero
    BATCH_TRANSFORM = "batch-transform"  # instances x hourly x each job's duration (start-up included)


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Dated prices of one region; ``instance_hourly`` by instance type."""

    region: str
    checked: str
    instance_hourly: dict[str, float]
    serverless_gb_second: float

    def hourly(self, instance_type: str) -> float | None:
        return self.instance_hourly.get(instance_type)


@cache
def shipped_prices() -> PriceTable:
    """The table shipped with the package (router/prices.json), sources and date inside."""
    raw: dict[str, Any] = json.loads((files("router") / "prices.json").read_text(encoding="utf-8"))
    return PriceTable(raw["region"], raw["checked"], dict(raw["instance_hourly"]), float(raw["serverless_gb_second"]))


def price_table(cfg: RouterConfig) -> PriceTable:
    """The shipped table with the config's ``prices`` overrides applied."""
    base = shipped_prices()
    over = cfg.prices
    gb_s = over.serverless_gb_second if over.serverless_gb_second is not None else base.serverless_gb_second
    return PriceTable(base.region, base.checked, {**base.instance_hourly, **over.instance_hourly}, gb_s)


@dataclass(frozen=True, slots=True)
class BackendCost:
    """One backend's billing, resolved to numbers."""

    billing: Billing
    hourly: float = 0.0  # $ per instance-hour
    instances: int = 0
    memory_gb: float = 0.0  # serverless: memory in GB (1024 MB = 1 GB, as AWS bills it)
    gb_second: float = 0.0
    provisioned: int = 0  # serverless provisioned concurrency
    provisioned_gb_second: float = 0.0
    slots: int = 1  # calls sharing one instance's time (per-call share of instance time)

    @property
    def fixed_per_hour(self) -> float:
        """What it costs per hour whatever the traffic: always-on instances, provisioned concurrency."""
        if self.billing is Billing.INSTANCES:
            return self.instances * self.hourly
        if self.billing is Billing.SERVERLESS:
            return self.provisioned * self.memory_gb * self.provisioned_gb_second * HOUR
        return 0.0

    def call(self, seconds: float) -> float:
        """The estimated cost of one call lasting ``seconds``: its GB-seconds on serverless, else its share of
        an instance's time (one of ``slots`` calls an instance serves at once)."""
        if self.billing is Billing.SERVERLESS:
            return self.memory_gb * seconds * self.gb_second
        return self.hourly * seconds / HOUR / self.slots

    def instance_time(self, instance_seconds: float) -> float:
        """The cost of instances running (or a transform job's instances) for ``instance_seconds`` in total."""
        return self.hourly * instance_seconds / HOUR

    def transform_job(self, seconds: float, instances: int | None = None) -> float:
        """One Batch Transform job: its instances for its whole duration, start-up included."""
        return self.instance_time((self.instances if instances is None else instances) * seconds)


class CostError(ValueError):
    """A backend's cost cannot be priced; ``field`` is the key under ``cost`` to fix."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def billing_of(bcfg: BackendConfig) -> Billing:
    if isinstance(bcfg, SageMakerBatchBackendConfig):
        return Billing.BATCH_TRANSFORM
    if isinstance(bcfg, SageMakerAsyncBackendConfig):
        return Billing.ASYNC
    return Billing.SERVERLESS if bcfg.serverless is not None else Billing.INSTANCES


def backend_cost(bcfg: BackendConfig, prices: PriceTable) -> BackendCost | None:
    """The billing of a backend with a ``cost`` block (a sagemaker-batch one is priced from its own instance
    fields); None without one. Raises CostError when a price is missing."""
    cost = bcfg.cost
    billing = billing_of(bcfg)
    if cost is None and billing is not Billing.BATCH_TRANSFORM:
        return None
    if billing is Billing.SERVERLESS:
        assert cost is not None
        if cost.memory_mb is None:
            raise CostError("a serverless backend's cost needs memory_mb (1024..6144)", "memory_mb")
        gb_s = cost.gb_second if cost.gb_second is not None else prices.serverless_gb_second
        if cost.provisioned_concurrency and cost.provisioned_gb_second is None:
            raise CostError("provisioned_concurrency needs provisioned_gb_second (the table has no such price)",
                            "provisioned_gb_second")
        return BackendCost(billing, memory_gb=cost.memory_mb / 1024.0, gb_second=gb_s,
                           provisioned=cost.provisioned_concurrency,
                           provisioned_gb_second=cost.provisioned_gb_second or 0.0)
    instance_type: str | None
    if isinstance(bcfg, SageMakerBatchBackendConfig):
        instance_type, instances = bcfg.instance_type, bcfg.instance_count
        if cost is not None and cost.instance_type is not None:
            instance_type = cost.instance_type
    else:
        assert cost is not None
        instance_type, instances = cost.instance_type, cost.instances
    hourly = cost.hourly if cost is not None and cost.hourly is not None else None
    if hourly is None:
        if instance_type is None:
            raise CostError("set instance_type (priced from the table) or hourly", "instance_type")
        hourly = prices.hourly(instance_type)
        if hourly is None:
            raise CostError(f"no price for {instance_type!r} in the {prices.region} table (checked {prices.checked}): "
                            "set cost.hourly or prices.instance_hourly", "instance_type")
    limit = bcfg.max_concurrency
    slots = cost.slots if cost is not None and cost.slots is not None else (
        max(1, limit // max(1, instances)) if isinstance(limit, int) else 1)
    return BackendCost(billing, hourly=hourly, instances=instances, slots=slots)


def cost_issues(cfg: RouterConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Every backend whose cost cannot be priced: (path, message)."""
    prices = price_table(cfg)
    issues: list[tuple[tuple[str | int, ...], str]] = []
    for name, bcfg in cfg.backends.items():
        try:
            backend_cost(bcfg, prices)
        except CostError as exc:
            where: tuple[str | int, ...] = ("backends", name, "cost", exc.field) if bcfg.cost is not None \
                else ("backends", name, "instance_type")
            issues.append((where, str(exc)))
    return issues


def costs(cfg: RouterConfig) -> dict[str, BackendCost]:
    """Every priced backend of a valid config, by name."""
    prices = price_table(cfg)
    out = {}
    for name, bcfg in cfg.backends.items():
        c = backend_cost(bcfg, prices)
        if c is not None:
            out[name] = c
    return out
