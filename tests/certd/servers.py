"""Echo services and clients for nginx tests: plain HTTP or TLS, from a chosen loopback address."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "service": self.server.name,  # type: ignore[attr-defined]
                "path": self.path,
                "xff": self.headers.get("X-Forwarded-For"),
                "real_ip": self.headers.get("X-Real-IP"),
                "proto": self.headers.get("X-Forwarded-Proto"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if "big-headers" in self.path:  # as hosted APIs send: many and long
            for i in range(12):
                self.send_header(f"x-big-{i}", "v" * 1000)
        self.end_headers()
        self.wfile.write(body)


def serve(name: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Echo)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _answer(
    conn: http.client.HTTPConnection,
    path: str,
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    headers = headers or {"X-Forwarded-For": "127.0.0.1"}
    headers = {**headers, **({"Host": host} if host else {})}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"text": body.decode(errors="replace")}
    if not isinstance(answer, dict):
        answer = {"json": answer}
    return response.status, {**answer, "location": response.getheader("Location")}


def get(
    port: int,
    path: str,
    source: str = "127.0.0.1",
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """GET over plain HTTP from `source` with `headers` (default: a spoofed X-Forwarded-For
    nginx must ignore), with Host `host` (default: 127.0.0.1:port)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    return _answer(conn, path, host, headers)


def tls_get(
    port: int, path: str, context: ssl.SSLContext, host: str, source: str = "127.0.0.1"
) -> tuple[int, dict[str, Any], bytes]:
    """GET over TLS to 127.0.0.1 with SNI and Host `host`; also returns the server's cert."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    tls = context.wrap_socket(raw, server_hostname=host)
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.sock = tls  # already connected: http.client skips connect()
    status, body = _answer(conn, path)
    return status, body, der
