"""llmp/nginx_log.py: nginx's lines in llmp's format, through supervisord's event protocol."""

from __future__ import annotations

import io

import pytest

from llmp.nginx_log import format_line, redact, relay

NOW = 1767323045.25  # 2026-01-02T03:04:05.250Z


def test_nginx_lines_get_the_program_name_and_llmps_levels():
    line = "2026/01/02 03:04:05 [error] 12#12: *7 connect() failed (111: Connection refused)"
    assert format_line("nginx", line, NOW) == (
        "2026-01-02T03:04:05.250Z ERROR nginx *7 connect() failed (111: Connection refused)"
    )
    assert format_line("nginx", "nginx: [emerg] bind() failed", NOW).endswith(
        " CRITICAL nginx bind() failed"
    )
    assert format_line("nginx", "something else", NOW).endswith(" INFO nginx something else")
    ours = "2026-01-02T03:04:05.250Z WARNING nginx retiring processes"
    assert format_line("nginx", ours, NOW) == ours


def _event(data: bytes, serial: int) -> bytes:
    payload = b"processname:nginx groupname:nginx pid:12 channel:stdout\n" + data
    header = f"ver:3.0 server:supervisor serial:{serial} pool:nginx-log poolserial:{serial} "
    header += f"eventname:PROCESS_LOG_STDOUT len:{len(payload)}\n"
    return header.encode() + payload


def test_relay_speaks_the_protocol_and_joins_cut_lines():
    events = io.BytesIO(
        _event(b"2026/01/02 03:04:05 [warn] 1#1: first\n2026/01/02 03:04:05 [er", 1)
        + _event(b"ror] 1#1: second\n", 2)
    )
    protocol, out = io.StringIO(), io.StringIO()
    relay(events, protocol, out)
    assert protocol.getvalue() == "READY\nRESULT 2\nOK" * 2 + "READY\n"
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "WARNING nginx first",
        "ERROR nginx second",
    ]


def test_keys_jwts_and_query_strings_never_reach_the_log():
    key = "sk-" + "ab12" * 16
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VybmFtZSI6ImFkbWluIn0.c2lnbmF0dXJl"
    line = (
        "2026/01/02 03:04:05 [error] 12#12: *41 connect() failed (111: Connection refused) while"
        f' connecting to upstream, client: 127.0.0.1, request: "GET /api/keys/validate/{key}'
        f' HTTP/1.1", upstream: "http://127.0.0.1:1/api/analytics/{key[3:]}/csv?token={jwt}",'
        f' referrer: "http://x/?{jwt}", id 258468e40a9072459bd479e5c81bd608'
    )
    formatted = format_line("nginx", line, NOW)
    for secret in (key, key[3:], jwt, "token="):
        assert secret not in formatted
    assert "/api/keys/validate/[redacted] HTTP/1.1" in formatted
    assert "258468e40a9072459bd479e5c81bd608" in formatted  # key ids are no secret


HEX = "ab12" * 16


@pytest.mark.parametrize(
    "path",
    [
        f"sk%2d{HEX}",
        f"sk%2D{HEX}",
        f"%73%6b%2d{HEX}",
        f"sk%252d{HEX}",  # decoded twice by whatever decodes again
        f"sk-%61%62{HEX[4:]}12",
        "%61%62" + HEX[4:] + "12",
        f"SK-{HEX.upper()}",
        f"x{HEX}x".replace("x", "%2d"),
    ],
)
def test_keys_in_any_percent_encoding_never_reach_the_log(path: str):
    line = f'*41 upstream timed out, request: "GET /api/keys/validate/{path} HTTP/1.1", host: "gw"'
    redacted = redact(line)
    assert redacted == (
        '*41 upstream timed out, request: "GET /api/keys/validate/[redacted] HTTP/1.1", host: "gw"'
    )


def test_redaction_leaves_ordinary_words_alone():
    line = 'open() "/x/%41dmin" failed (2: No such file or directory), client: 127.0.0.1'
    assert redact(line) == line
