"""A small, real fraud scorer: standardised logistic regression in pure Python.

Weights, bias and per-feature standardisation ship in ``fraud_weights.json``. The payload
contract mirrors a SageMaker container: ``text/csv`` rows in, one probability per line out,
or ``application/json`` ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

CSV = "text/csv"
JSON = "application/json"
# One SageMaker real-time payload is at most 6 MB; a row cap keeps a single request bounded too.
MAX_ROWS = 10_000


class ModelInputError(ValueError):
    """The payload cannot be scored; the message names the offending line or instance."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _hours_from_3am(hour: float) -> float:
    # Fraud peaks in the small hours; circular distance keeps 23:00 close to 01:00.
    d = abs(hour - 3.0) % 24.0
    return min(d, 24.0 - d)


_TRANSFORMS: dict[str, Callable[[float], float]] = {
    "identity": lambda x: x,
    "log1p": math.log1p,
    "hours_from_3am": _hours_from_3am,
}


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column: its transform, standardisation, weight and accepted range."""

    name: str
    transform: str
    mean: float
    scale: float
    weight: float
    min: float
    max: float

    def contribution(self, value: float) -> float:
        return self.weight * (_TRANSFORMS[self.transform](value) - self.mean) / self.scale


def _sigmoid(z: float) -> float:
    # Split by sign so math.exp never overflows for extreme inputs.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _media_type(header: str | None) -> str | None:
    if header is None:
        return None
    return header.split(";", 1)[0].strip().lower() or None


def _response_type(accept: str | None, request_type: str) -> str:
    if accept is None:
        return request_type
    offered = [_media_type(part) for part in accept.split(",")]
    for media in offered:
        if media in (CSV, JSON):
            return media
    if any(media in ("*/*", "text/*", "application/*", None) for media in offered):
        return request_type
    raise ModelInputError(f"cannot answer with Accept: {accept!r}; supported: {CSV}, {JSON}")


class FraudModel:
    """Logistic-regression fraud scorer; ``load()`` reads the shipped weights."""

    def __init__(
        self, features: Sequence[Feature], bias: float, threshold: float = 0.5, version: str = "unknown"
    ) -> None:
        if not features:
            raise ValueError("a model needs at least one feature")
        for f in features:
            if f.transform not in _TRANSFORMS:
                raise ValueError(f"feature {f.name!r}: unknown transform {f.transform!r}")
            if f.scale <= 0:
                raise ValueError(f"feature {f.name!r}: scale must be > 0")
        self.features: tuple[Feature, ...] = tuple(features)
        self.bias = bias
        self.threshold = threshold
        self.version = version
        self.max_rows = MAX_ROWS  # rows per request (a real-time server's limit; raise it for batch-sized jobs)

    @classmethod
    def load(cls, resource: str = "fraud_weights.json") -> FraudModel:
        """Read weights shipped as package data next to this module."""
        raw = resources.files("router.demo").joinpath(resource).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FraudModel:
        features = [
            Feature(
                name=str(f["name"]),
                transform=str(f.get("transform", "identity")),
                mean=float(f["mean"]),
                scale=float(f["scale"]),
                weight=float(f["weight"]),
                min=float(f.get("min", -math.inf)),
                max=float(f.get("max", math.inf)),
            )
            for f in data["features"]
        ]
        return cls(
            features,
            bias=float(data["bias"]),
            threshold=float(data.get("threshold", 0.5)),
            version=str(data.get("version", "unknown")),
        )

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def score(self, row: Sequence[float]) -> float:
        """Fraud probability for one already-validated row in feature order."""
        z = self.bias + sum(f.contribution(v) for f, v in zip(self.features, row, strict=True))
        return _sigmoid(z)

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        return [self.score(self._check(row, f"row {i}")) for i, row in enumerate(rows, 1)]

    def predict_payload(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[bytes, str]:
        """Score a CSV or JSON payload; returns (response body, response content type)."""
        request_type = _media_type(content_type)
        if request_type == CSV:
            rows = self._parse_csv(body)
        elif request_type == JSON:
            rows = self._parse_json(body)
        else:
            raise ModelInputError(f"unsupported Content-Type {content_type!r}; use {CSV} or {JSON}")
        out_type = _response_type(accept, request_type)
        scores = [self.score(row) for row in rows]
        if out_type == CSV:
            return "".join(f"{s:.6f}\n" for s in scores).encode(), CSV
        preds = [{"score": round(s, 6), "fraud": s >= self.threshold} for s in scores]
        return json.dumps({"predictions": preds}).encode(), JSON

    def _check(self, values: Sequence[float], where: str) -> list[float]:
        n = len(self.features)
        if len(values) != n:
            raise ModelInputError(f"{where}: expected {n} values ({', '.join(self.feature_names)}), got {len(values)}")
        for f, v in zip(self.features, values, strict=True):
            if not math.isfinite(v):
                raise ModelInputError(f"{where}: {f.name} must be a finite number, got {v!r}")
            if not f.min <= v <= f.max:
                raise ModelInputError(f"{where}: {f.name}={v:g} is outside [{f.min:g}, {f.max:g}]")
        return list(values)

    def _parse_csv(self, body: bytes) -> list[list[float]]:
        text = _decode(body)
        rows: list[list[float]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            values: list[float] = []
            for col, cell in enumerate(line.split(","), 1):
                try:
                    values.append(float(cell.strip()))
                except ValueError:
                    raise ModelInputError(
                        f"line {lineno}: field {col} ({cell.strip()!r}) is not a number (header rows are not accepted)"
                    ) from None
            rows.append(self._check(values, f"line {lineno}"))
            _check_row_count(len(rows), self.max_rows)
        if not rows:
            raise ModelInputError("empty CSV payload: expected at least one row")
        return rows

    def _parse_json(self, body: bytes) -> list[list[float]]:
        try:
            doc = json.loads(_decode(body))
        except json.JSONDecodeError as exc:
            raise ModelInputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
            raise ModelInputError('expected a JSON object {"instances": [...]}')
        instances: list[Any] = doc["instances"]
        if not instances:
            raise ModelInputError("instances is empty: expected at least one instance")
        _check_row_count(len(instances), self.max_rows)
        return [self._instance(inst, f"instance {i}") for i, inst in enumerate(instances)]

    def _instance(self, inst: Any, where: str) -> list[float]:
        if isinstance(inst, dict):
            names = self.feature_names
            missing = [n for n in names if n not in inst]
            unknown = sorted(k for k in inst if k not in names)
            if missing or unknown:
                raise ModelInputError(f"{where}: missing features {missing}, unknown keys {unknown}")
            inst = [inst[n] for n in names]
        if not isinstance(inst, list):
            raise ModelInputError(f"{where}: expected a list of numbers or an object keyed by feature name")
        for j, v in enumerate(inst):
            # bool is an int subclass in Python; true/false is almost certainly a client bug.
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ModelInputError(f"{where}: value {j} ({v!r}) is not a number")
        return self._check([float(v) for v in inst], where)


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelInputError(f"payload is not UTF-8 (byte {exc.start})") from None


def _check_row_count(n: int, limit: int) -> None:
    if n > limit:
        raise ModelInputError(f"too many rows: at most {limit} per request")
