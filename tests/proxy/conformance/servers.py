"""Real servers for the conformance suite, each on a free loopback port.

- `Scripted`: a raw asyncio server in a thread of its own that answers as a test scripts it,
  byte for byte (for the malformed and racy cases no real server produces on demand), and
  counts the requests it received.
- `process_server`: gunicorn, uvicorn, hypercorn, node, nginx and openssl s_server, each in a
  process of its own; `http_server`: Python's http.server in a thread.
- `Certificates`: a private CA, a server certificate for 127.0.0.1 and a client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

Handler = Callable[["Scripted", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and body (Content-Length framed); b"" at the end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


class Scripted:
    """A raw server; `handler(server, reader, writer)` runs per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scripted", daemon=True)

    async def read(self, reader: asyncio.StreamReader) -> bytes:
        request = await read_request(reader)
        if request:
            self.requests.append(request)
        return request

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def start() -> asyncio.Server:
            return await asyncio.start_server(serve, "127.0.0.1", 0)

        self.server = self.loop.run_until_complete(start())
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> Scripted:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)  # the transports' close callbacks

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def node() -> str:
    """The machine's node, else the one scripts/npm installed into the venv (a fresh Debian 12
    has none, and its own is too old to build the UI)."""
    return shutil.which("node") or str(Path(sys.prefix) / "node" / "bin" / "node")


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.args!r}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def process_server(
    argv: list[str], port: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        argv,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def python_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


NODE_SERVER = r"""
const http = require("http");
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    if (req.url === "/stream") {
      res.writeHead(200, {"content-type": "text/event-stream"});
      let i = 0;
      const next = () => { if (i < 5) { res.write(`data: ${i++}\n\n`); setImmediate(next); }
                           else res.end(); };
      next();
    } else if (req.url === "/trailers") {
      res.writeHead(200, {"content-type": "text/plain", "trailer": "x-checksum"});
      res.write("body");
      res.addTrailers({"x-checksum": "abc"});
      res.end();
    } else {
      res.writeHead(200, {"content-length": body.length, "x-method": req.method});
      res.end(body);
    }
  });
});
server.keepAliveTimeout = 2000;
server.listen(Number(process.argv[2]), "127.0.0.1");
"""

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /echo {{ return 200 "nginx"; }}
    location /stream {{ default_type text/event-stream; return 200 "data: 0\\n\\n"; }}
  }}
}}
"""


@contextlib.contextmanager
def server_of(kind: str, tmp: Path) -> Iterator[str]:
    """A real server of `kind` serving apps.py's routes (or the same routes in its own words);
    yields its base URL."""
    port = free_port()
    app = "tests.proxy.conformance.apps"
    argv: list[str]
    if kind == "http.server":
        with http_server(port):
            yield f"http://127.0.0.1:{port}"
        return
    if kind == "gunicorn":
        argv = [python_tool("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", f"{app}:wsgi"]
    elif kind == "uvicorn":
        argv = [python_tool("uvicorn"), "--port", str(port), "--no-access-log", f"{app}:asgi"]
    elif kind == "hypercorn":
        argv = [python_tool("hypercorn"), "-b", f"127.0.0.1:{port}", f"{app}:asgi"]
    elif kind == "node":
        script = tmp / "server.js"
        script.write_text(NODE_SERVER)
        argv = [node(), str(script), str(port)]
    elif kind == "nginx":
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, port=port))
        argv = [shutil.which("nginx") or "nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
    else:
        raise ValueError(kind)
    root = Path(__file__).resolve().parents[3]
    env = {"PYTHONPATH": str(root), RUN_LOG_ENV: str(tmp / "runs.log")}
    with process_server(argv, port, env=env, cwd=root):
        yield f"http://127.0.0.1:{port}"


RUN_LOG_ENV = "CONFORMANCE_RUN_LOG"


class EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            for i in range(5):
                self.wfile.write(f"data: {i}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-method", self.command)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


@contextlib.contextmanager
def http_server(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http.server", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


class Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmp test CA")])
        self.ca = self._write("ca.pem", self._cert(name, name, ca_key, ca_key, ca=True))
        self.server, self.server_key = self._issue("server", ca_key, name, server=True)
        self.client, self.client_key = self._issue("client", ca_key, name, server=False)

    def _cert(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool = False,
        server: bool = False,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            ).add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    def _issue(
        self, stem: str, ca_key: ec.EllipticCurvePrivateKey, issuer: x509.Name, server: bool
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"llmp test {stem}")])
        cert = self._cert(subject, issuer, key, ca_key, server=server)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key_path = self.folder / f"{stem}-key.pem"
        key_path.write_bytes(key_pem)
        return self._write(f"{stem}.pem", cert), key_path

    def _write(self, name: str, cert: x509.Certificate) -> Path:
        path = self.folder / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


@contextlib.contextmanager
def openssl_server(certs: Certificates, client_ca: bool = False) -> Iterator[str]:
    """openssl s_server answering every request with its status page (HTTP/1.0, ended by the
    close of the connection); `client_ca`: it requires a client certificate from our CA."""
    port = free_port()
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-quiet"]
    argv += ["-cert", str(certs.server), "-key", str(certs.server_key)]
    if client_ca:
        argv += ["-Verify", "1", "-verify_return_error", "-CAfile", str(certs.ca)]
    with process_server(argv, port):
        yield f"https://127.0.0.1:{port}"
