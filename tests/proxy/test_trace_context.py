"""W3C Trace Context headers (services/proxy/trace_context.py), by the spec's grammar."""

from __future__ import annotations

import pytest

from services.proxy.trace_context import (
    TraceParent,
    from_headers,
    header,
    parse_traceparent,
    parse_tracestate,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_traceparent_and_its_numbers():
    assert parse_traceparent(VALID) == (int(TRACE, 16), int(SPAN, 16), 1)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == (int(TRACE, 16), int(SPAN, 16), 0)
    # A later version may say more after a dash; what it says is ignored.
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-holds") is not None
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-09") == (int(TRACE, 16), int(SPAN, 16), 9)
    assert header(int(TRACE, 16), int(SPAN, 16), 1).decode() == VALID


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID.upper(),  # lowercase hex only
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 is exactly 55 characters
        f"00-{TRACE}-{SPAN}-01 ",
        f" 00-{TRACE}-{SPAN}-01",
        f"cc-{TRACE}-{SPAN}-01extra",  # more must follow a dash
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00_{TRACE}_{SPAN}_01",
        f"00-{TRACE}-{SPAN}-0g",
        f"00-{TRACE}-{SPAN}-01\n",
        f"0-{TRACE}-{SPAN}-01",
        f"00-{TRACE[:-1]}\u00e9-{SPAN}-01",
    ],
)
def test_a_malformed_traceparent_is_refused(value):
    assert parse_traceparent(value) is None


def test_tracestate_members_in_order_empty_ones_skipped():
    assert parse_tracestate(["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", ",,\tvendor@sys=a b"]) == (
        ("rojo", "00f067aa0ba902b7"),
        ("congo", "t61rcWkgMzE"),
        ("vendor@sys", "a b"),
    )


@pytest.mark.parametrize(
    "values",
    [
        ["Rojo=1"],  # keys are lowercase
        ["rojo"],
        ["rojo=1=2"],  # no = in a value
        ["rojo=1\x01"],  # printable ASCII only
        ["rojo="],  # a value is at least one character
        ["rojo=1", "rojo=2"],  # a key twice
        ["@sys=1"],
        ["t@Sys=1"],
        ["rojo=caf\u00e9"],
        [",".join(f"k{i}=v" for i in range(33))],  # at most 32 members
        ["k=" + "v" * 257],
    ],
)
def test_a_malformed_tracestate_is_discarded(values):
    assert parse_tracestate(values) is None


def test_the_headers_of_a_request():
    state = [(b"tracestate", b"rojo=1"), (b"tracestate", b"congo=2")]
    found = from_headers([(b"traceparent", VALID.encode()), *state])
    assert found == TraceParent(int(TRACE, 16), int(SPAN, 16), 1, (("rojo", "1"), ("congo", "2")))
    # A tracestate that breaks the grammar is dropped; the traceparent stands.
    kept = from_headers([(b"traceparent", VALID.encode()), (b"tracestate", b"Bad=1")])
    assert kept == TraceParent(int(TRACE, 16), int(SPAN, 16), 1)
    assert from_headers([(b"tracestate", b"rojo=1")]) is None
    assert from_headers([(b"traceparent", b"\xff" * 55)]) is None
    # Two traceparents are ambiguous: neither is taken.
    assert from_headers([(b"traceparent", VALID.encode())] * 2) is None
