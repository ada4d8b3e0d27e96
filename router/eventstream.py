"""The ``application/vnd.amazon.eventstream`` encoding of InvokeEndpointWithResponseStream's answer.

botocore ships only the decoder (``botocore.eventstream``); this is the encoder, checked against it. A
message is: total length and headers length (big-endian uint32), the CRC32 of those 8 bytes, the headers
(name length byte, name, type 7 = string, uint16 value length, value), the payload, and the CRC32 of all
that came before.
"""

from __future__ import annotations

import json
import struct
from binascii import crc32

_STRING = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _headers(pairs: tuple[tuple[str, str], ...]) -> bytes:
    out = bytearray()
    for name, value in pairs:
        raw_name, raw_value = name.encode(), value.encode()
        out += bytes((len(raw_name),)) + raw_name + bytes((_STRING,)) + struct.pack(">H", len(raw_value)) + raw_value
    return bytes(out)


def message(headers: bytes, payload: bytes) -> bytes:
    """One event-stream message from encoded ``headers`` and ``payload``."""
    prelude = _PRELUDE.pack(16 + len(headers) + len(payload), len(headers))
    head = prelude + _CRC.pack(crc32(prelude)) + headers + payload
    return head + _CRC.pack(crc32(head))


_PAYLOAD_PART = _headers(((":event-type", "PayloadPart"), (":content-type", "application/octet-stream"),
                          (":message-type", "event")))


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data`` (the model's bytes, as they came)."""
    return message(_PAYLOAD_PART, data)


def model_stream_error(text: str, error_code: str) -> bytes:
    """A ``ModelStreamError`` exception event: the model failed mid-stream (boto3 raises EventStreamError)."""
    return message(_headers(((":exception-type", "ModelStreamError"), (":content-type", "application/json"),
                             (":message-type", "exception"))),
                   json.dumps({"Message": text, "ErrorCode": error_code}).encode())


def internal_stream_failure(text: str) -> bytes:
    """An ``InternalStreamFailure`` exception event: the stream failed for a reason of the router's own."""
    return message(_headers(((":exception-type", "InternalStreamFailure"), (":content-type", "application/json"),
                             (":message-type", "exception"))),
                   json.dumps({"Message": text}).encode())
