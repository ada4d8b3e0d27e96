"""Records of a batch request, by content type: CSV lines, JSON Lines, or a JSON ``instances`` array.

A request body is split into records (each one line, or one instance re-encoded compactly); many
records are joined into one mini-batch payload for the model; the model's answer is split back into one
output per record; a job's outputs are assembled into a result in the request's own format.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from enum import StrEnum


class RecordFormat(StrEnum):
    CSV = "text/csv"
    JSONL = "application/jsonlines"
    JSON = "application/json"


_ALIASES = {
    "text/csv": RecordFormat.CSV,
    "application/jsonlines": RecordFormat.JSONL,
    "application/x-jsonlines": RecordFormat.JSONL,
    "application/jsonl": RecordFormat.JSONL,
    "application/x-ndjson": RecordFormat.JSONL,
    "application/json": RecordFormat.JSON,
}


class RecordError(ValueError):
    """A record that does not parse for its content type; ``line`` is 1-based (instance index + 1 for JSON)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class OutputCountMismatch(ValueError):
    """The model answered a different number of outputs than it was sent records."""


def record_format(content_type: str | None) -> RecordFormat | None:
    """The format of a content type (parameters ignored); None when batch records cannot be read from it."""
    if not content_type:
        return RecordFormat.CSV  # SageMaker's default for batch transform input
    return _ALIASES.get(content_type.split(";", 1)[0].strip().lower())


def _lines(body: bytes) -> list[bytes]:
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # a final newline ends the last line, it does not start an empty one
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def parse_records(body: bytes, fmt: RecordFormat) -> list[bytes]:
    """The records of a request, in order; RecordError names the first line that does not parse."""
    if fmt is RecordFormat.JSON:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(getattr(exc, "lineno", 1), f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
            raise RecordError(1, 'expected a JSON object {"instances": [...]}')
        return [json.dumps(inst, separators=(",", ":")).encode() for inst in doc["instances"]]
    records = _lines(body)
    for number, line in enumerate(records, 1):
        if not line.strip():
            raise RecordError(number, "empty record")
        try:
            text = line.decode()
        except UnicodeDecodeError:
            raise RecordError(number, "not UTF-8") from None
        if fmt is RecordFormat.JSONL:
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise RecordError(number, f"not JSON: {exc.msg}") from None
        elif '"' in text:  # only quoted fields can hide a broken row; plain ones are one row by construction
            try:
                if text.count('"') % 2:
                    raise csv.Error("unbalanced quotes")
                next(csv.reader([text], strict=True))
            except csv.Error as exc:
                raise RecordError(number, f"not CSV: {exc}") from None
    return records


def join_records(records: Sequence[bytes], fmt: RecordFormat) -> bytes:
    """One payload carrying ``records`` for a model that takes many at once (MultiRecord)."""
    if fmt is RecordFormat.JSON:
        return b'{"instances":[' + b",".join(records) + b"]}"
    return b"\n".join(records) + b"\n"


def split_outputs(body: bytes, content_type: str | None, expected: int) -> list[bytes]:
    """The model's answer to a mini-batch, one output per record; OutputCountMismatch if counts differ.

    JSON answers are ``{"predictions": [...]}`` (or a bare list); anything else is one output per line.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    outputs: list[bytes]
    if media == "application/json":
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OutputCountMismatch(f"model answered invalid JSON: {exc}") from None
        items = doc.get("predictions") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise OutputCountMismatch('model answered JSON without a "predictions" list')
        outputs = [json.dumps(item, separators=(",", ":")).encode() for item in items]
    else:
        outputs = _lines(body)
    if len(outputs) != expected:
        raise OutputCountMismatch(f"model answered {len(outputs)} outputs for {expected} records")
    return outputs


def assemble(outputs: Sequence[bytes | None], fmt: RecordFormat) -> bytes:
    """A job's result in the request's format: one output per record, in input order; failed ones null/empty."""
    if fmt is RecordFormat.JSON:
        return b'{"predictions":[' + b",".join(o if o is not None else b"null" for o in outputs) + b"]}"
    if fmt is RecordFormat.JSONL:
        return b"".join((o if o is not None else b"null") + b"\n" for o in outputs)
    return b"".join((o if o is not None else b"") + b"\n" for o in outputs)
