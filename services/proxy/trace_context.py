"""W3C Trace Context (https://www.w3.org/TR/trace-context/): a client's `traceparent` and
`tracestate` headers, parsed by the grammar and nothing looser, so that a request traced by its
client is one trace with the gateway's spans and the upstream's (services/proxy/tracing.py).

- `traceparent`: `version-traceid-parentid-flags` in lowercase hex. Version `ff` is invalid; a
  version-00 header is exactly 55 characters; a later version may carry more after a `-`, which
  is ignored, as the spec says. A trace id or parent id of all zeros is invalid. Two headers are
  ambiguous, and refused.
- `tracestate` (read only with a valid `traceparent`): at most 32 list members `key=value`,
  comma-separated with optional spaces or tabs, empty members skipped, several headers joined
  with commas (RFC 9110); keys and values by the spec's grammar, no key twice. Anything else
  discards the tracestate, and keeps the traceparent.

What does not parse is ignored: the gateway's span then starts a trace of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_LATER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.S)
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}"  # simple-key
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"  # tenant-id@system-id
)
# Printable ASCII but `,` and `=`; spaces inside, not last.
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_MEMBERS = 32


@dataclass(frozen=True, slots=True)
class TraceParent:
    trace_id: int
    span_id: int  # the client's span: the parent of the gateway's
    flags: int
    state: tuple[tuple[str, str], ...] = ()  # the tracestate's members, in order


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """(trace id, parent id, flags) of a valid header, else None."""
    found = _VERSION_00.fullmatch(value)
    if found is not None:
        trace_id, span_id, flags = found.groups()
    else:
        later = _LATER.fullmatch(value)
        if later is None or later.group(1) in ("00", "ff"):
            return None
        trace_id, span_id, flags = later.group(2, 3, 4)
    if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def parse_tracestate(values: list[str]) -> tuple[tuple[str, str], ...] | None:
    """The members of the (joined) tracestate headers, or None if they break the grammar."""
    members: list[tuple[str, str]] = []
    for part in ",".join(values).split(","):
        member = part.strip(" \t")
        if not member:
            continue
        key, equals, value = member.partition("=")
        if not equals or _KEY.fullmatch(key) is None or _VALUE.fullmatch(value) is None:
            return None
        members.append((key, value))
    keys = [key for key, _ in members]
    if len(members) > MAX_MEMBERS or len(keys) != len(set(keys)):
        return None
    return tuple(members)


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> TraceParent | None:
    """The client's trace context from a request's headers (names in lowercase, as ASGI gives
    them); None without one, or with one that does not parse."""
    parents: list[bytes] = []
    states: list[bytes] = []
    for name, value in headers:
        if name == b"traceparent":
            parents.append(value)
        elif name == b"tracestate":
            states.append(value)
    if len(parents) != 1:
        return None
    # latin-1 decodes any bytes; the grammar takes ASCII only.
    parsed = parse_traceparent(parents[0].decode("latin-1"))
    if parsed is None:
        return None
    state = parse_tracestate([v.decode("latin-1") for v in states]) if states else ()
    return TraceParent(*parsed, state=state or ())


def header(trace_id: int, span_id: int, flags: int) -> bytes:
    """A version-00 traceparent."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}".encode()
