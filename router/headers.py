"""Which headers a proxy passes on (RFC 9110 section 7.6.1, as Go's httputil.ReverseProxy reads it): every
end-to-end header, none of the hop-by-hop ones, nor those a ``Connection`` header names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade"})
_HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
# Set by the transport itself: Host and Content-Length by the client library, Date by the server the router runs in
_REQUEST_OWN = frozenset({"host", "content-length"})
_ANSWER_OWN = frozenset({b"date"})


def _named_by_connection(values: Iterable[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def request_headers(raw: Iterable[tuple[bytes, bytes]], keep_back: frozenset[str]) -> list[tuple[str, str]]:
    """A client's request headers (ASGI, names in lower case) as they go upstream: without hop-by-hop ones,
    Host, Content-Length (the body's framing is the client library's) and ``keep_back`` (the router's own)."""
    out: list[tuple[str, str]] = []
    connection: list[str] = []
    for key, value in raw:
        name = key.decode("latin-1")
        if name in HOP_BY_HOP or name in _REQUEST_OWN or name in keep_back:
            if name == "connection":
                connection.append(value.decode("latin-1"))
            continue
        out.append((name, value.decode("latin-1")))
    if connection:
        named = _named_by_connection(connection)
        out = [(k, v) for k, v in out if k not in named]
    return out


def answer_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An upstream answer's headers (as aiohttp's ``raw_headers``) as they go to the client, names in lower case."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[str] = []
    for key, value in raw:
        name = key.lower()
        if name in _HOP_BY_HOP_BYTES or name in _ANSWER_OWN:
            if name == b"connection":
                connection.append(value.decode("latin-1"))
            continue
        out.append((name, value))
    if connection:
        named = {n.encode("latin-1") for n in _named_by_connection(connection)}
        out = [(k, v) for k, v in out if k not in named]
    return out
