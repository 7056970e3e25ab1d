"""An offline ACME world for tests: pebble (Let's Encrypt's test CA), pebble-challtestsrv (its
mock DNS) and a fake Cloudflare API (tests/fake_cloudflare.py) that publishes certbot's TXT
records there. certbot and its real dns-cloudflare plugin run unmodified against it; only the
Cloudflare endpoint is fake. Every port is picked at random.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from tests.certd.servers import connects
from tests.conftest import eventually, free_port

HERE = Path(__file__).parent
NEEDED = ("pebble", "pebble-challtestsrv", "nginx", "openssl")
TOKEN = "test-token"
ZONE = "example.test"


class AcmeServer:
    """pebble issuing certificates valid for `validity` seconds."""

    def __init__(self, folder: Path, validity: int = 3600) -> None:
        self.folder = folder
        self.validity = validity
        self.ports = {k: free_port() for k in ("acme", "mgmt", "dns", "dnsmgmt", "cf")}
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['acme']}/dir"

    @property
    def cloudflare_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['cf']}/client/v4"

    @property
    def issued_root(self) -> Path:
        """Trust anchor for certificates this pebble issues (new at every pebble start)."""
        return self.folder / "pebble-root.pem"

    @property
    def credentials(self) -> Path:
        return self.folder / "cloudflare_credentials"

    def certbot_env(self) -> dict[str, str]:
        return {
            "REQUESTS_CA_BUNDLE": str(self.folder / "ca.pem"),  # certbot -> pebble's HTTPS
            "CLOUDFLARE_BASE_URL": self.cloudflare_url,  # cloudflare>=4 (pip plugin)
            "CLOUDFLARE_API_URL": self.cloudflare_url,  # CloudFlare 2.x (Debian's plugin)
        }

    def settings(self) -> dict[str, Any]:
        """Settings overrides that point certd at this world."""
        return {
            "acme_server": self.directory_url,
            "certbot_env": self.certbot_env(),
            "cloudflare_credentials": self.credentials,
            "dns_propagation_seconds": 0,
            "renew_retry_seconds": 2.0,
        }

    def env(self) -> dict[str, str]:
        """The same, as environment variables."""
        return {
            "ACME_SERVER": self.directory_url,
            "CERTBOT_ENV": json.dumps(self.certbot_env()),
            "CLOUDFLARE_CREDENTIALS": str(self.credentials),
            "DNS_PROPAGATION_SECONDS": "0",
            "RENEW_RETRY_SECONDS": "2",
        }

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.issued_root))

    def cloudflare_state(self) -> dict[str, Any]:
        url = self.cloudflare_url.replace("/client/v4", "/_fake/state")
        with urllib.request.urlopen(url, timeout=5) as response:
            state: dict[str, Any] = json.load(response)
            return state

    def start(self) -> AcmeServer:
        missing = [b for b in NEEDED if shutil.which(b) is None]
        if missing:
            pytest.fail(f"missing binaries {missing}: run scripts/system-deps test")
        d, p = self.folder, self.ports

        def run(*argv: str) -> None:
            subprocess.run(argv, cwd=d, check=True, capture_output=True)

        # TLS for pebble's own endpoints (Debian's pebble ships no test certificates).
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
        run(
            "openssl",
            "req",
            "-x509",
            *ec,
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        )
        run(
            "openssl",
            "req",
            *ec,
            "-subj",
            "/CN=localhost",
            "-keyout",
            "pebble.key",
            "-out",
            "pebble.csr",
        )
        (d / "ext.cnf").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        )
        run(
            "openssl",
            "x509",
            "-req",
            "-in",
            "pebble.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "pebble.pem",
        )
        (d / "pebble.json").write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{p['acme']}",
                        "managementListenAddress": f"127.0.0.1:{p['mgmt']}",
                        "certificate": str(d / "pebble.pem"),
                        "privateKey": str(d / "pebble.key"),
                        "httpPort": 5002,
                        "tlsPort": 5001,
                        "certificateValidityPeriod": self.validity,
                    }
                }
            )
        )
        self.credentials.write_text(f"dns_cloudflare_api_token = {TOKEN}\n")
        self.credentials.chmod(0o600)
        self._spawn(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-dns01",
                f"127.0.0.1:{p['dns']}",
                "-management",
                f"127.0.0.1:{p['dnsmgmt']}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ],
        )
        self._spawn(
            "pebble",
            [
                "pebble",
                "-config",
                str(d / "pebble.json"),
                "-dnsserver",
                f"127.0.0.1:{p['dns']}",
                "-strict=false",
            ],
            # No random validation sleep, no rejected nonces, no reused authorizations: fast and
            # deterministic (every order really goes through DNS-01).
            {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
        )
        self._spawn(
            "fakecf",
            [
                sys.executable,
                str(HERE.parent / "fake_cloudflare.py"),
                "--port",
                str(p["cf"]),
                "--zones",
                ZONE,
                "--token",
                TOKEN,
                "--challtestsrv",
                f"http://127.0.0.1:{p['dnsmgmt']}",
            ],
        )
        try:
            for port in (p["dnsmgmt"], p["acme"], p["mgmt"], p["cf"]):
                eventually(lambda port=port: self._alive() and connects(port), timeout=10)  # type: ignore[misc]  # a lambda with default arguments
            context = ssl.create_default_context(cafile=str(d / "ca.pem"))
            url = f"https://127.0.0.1:{p['mgmt']}/roots/0"
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                self.issued_root.write_bytes(response.read())
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        for process in self.processes:
            assert process.poll() is None, f"{process.args!r} exited: see {self.folder}"
        return True

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self._logs.append(log)
        self.processes.append(
            subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
