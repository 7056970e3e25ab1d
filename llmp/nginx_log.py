"""nginx's error log in llmp's log format, as a supervisord event listener.

Every other program writes `time LEVEL program message` lines itself (shared/logs.py); nginx's
error log has a fixed format without its name (`2026/01/02 03:04:05 [error] 12#12: message`),
and supervisord has no option to prefix a program's lines. So nginx's output reaches
supervisord only as PROCESS_LOG events, and this listener prints each line as
`time LEVEL nginx message` on its stderr, which supervisord sends to stdout.

nginx's error lines quote the request line (`request: "GET /api/keys/validate/sk-..."`), and
some admin routes take a key in their path: API keys (as the api would read them, percent-encoded
or not), JWTs and query strings are replaced with `[redacted]` before a line is printed (llmp's
logs never hold a key).

The protocol (supervisord's documentation, "Events"): write READY on stdout, read a header line
and `len` bytes of payload, answer `RESULT 2\\nOK`, repeat. Only the standard library.
"""

from __future__ import annotations

import re
import sys
import time
from typing import BinaryIO, TextIO
from urllib.parse import unquote

from shared.logs import stamp

_NGINX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(\w+)\] \d+#\d+: (.*)$")
_OURS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ ")  # shared/logs.py
_STARTUP = re.compile(r"^nginx: \[(\w+)\] (.*)$")  # before nginx has read its configuration
# A word of a line, as a path segment or a header value in it: between white space, quotes,
# slashes and the separators of a query.
_WORD = re.compile(r"[^\s\"/?&;,]+")
# What the api would take for an API key once it has decoded a path (`(sk-)?<64 hex>`, in any
# case and any percent-encoding), anything else that starts as a key does, and a JWT.
_SECRET = re.compile(
    r"sk-[^\s\"/?&;,]{6,}|(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])"
    r"|eyJ[\w-]*\.[\w-]+\.[\w-]*",
    re.IGNORECASE,
)
_QUERY = re.compile(r"(?<=\?)[^\s\"]+")
DECODINGS = 3  # `%252d` is `-` to whatever decodes twice
_LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "notice": "INFO",
    "warn": "WARNING",
    "error": "ERROR",
    "crit": "CRITICAL",
    "alert": "CRITICAL",
    "emerg": "CRITICAL",
}


def format_line(program: str, line: str, now: float | None = None) -> str:
    """One line of `program`'s output as llmp logs it (the time is when it arrived: nginx
    writes local time without a zone)."""
    if _OURS.match(line):
        return line  # llmp.launch's own lines, before it execs nginx
    now = time.time() if now is None else now
    match = _NGINX.match(line) or _STARTUP.match(line)
    level, message = (_LEVELS.get(match[1], "INFO"), match[2]) if match else ("INFO", line)
    return f"{stamp(now)} {level} {program} {redact(message)}"


def redact(message: str) -> str:
    """The message without API keys, JWTs or query strings: a word is replaced whole when it
    holds one as it is or once percent-decoded (as the api reads a path), repeatedly."""
    return _WORD.sub(_redact_word, _QUERY.sub("[redacted]", message))


def _redact_word(word: re.Match[str]) -> str:
    text = word[0]
    for _ in range(DECODINGS + 1):
        if _SECRET.search(text):
            return "[redacted]"
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return word[0]


def _fields(line: bytes) -> dict[str, str]:
    return dict(part.split(":", 1) for part in line.decode().split() if ":" in part)


def relay(events: BinaryIO, protocol: TextIO, out: TextIO) -> None:
    """Serve supervisord until it closes our stdin."""
    partial: dict[str, str] = {}
    while True:
        protocol.write("READY\n")
        protocol.flush()
        header = events.readline()
        if not header:
            return
        payload = events.read(int(_fields(header)["len"]))
        head, _, data = payload.partition(b"\n")
        program = _fields(head).get("processname", "?")
        text = partial.pop(program, "") + data.decode(errors="replace")
        *lines, rest = text.split("\n")
        if rest:
            partial[program] = rest  # a line cut between two events
        for line in lines:
            if line.strip():
                out.write(format_line(program, line) + "\n")
        out.flush()
        protocol.write("RESULT 2\nOK")
        protocol.flush()


if __name__ == "__main__":
    relay(sys.stdin.buffer, sys.stdout, sys.stderr)
