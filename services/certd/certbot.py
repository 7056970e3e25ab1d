"""Running certbot: one at a time, as an argument list (never a shell), with a timeout.

Every run passes what it relies on explicitly (`--non-interactive`, the directories, the ACME
server, the DNS-01 plugin and its propagation wait, `--no-random-sleep-on-renew`), because
certbot also reads `/etc/letsencrypt/cli.ini` whatever the directories say. Values go in
`--flag=value` form, so none can ever be read as another option. Failures raise CertbotError
with certbot's own explanation.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shared.settings import Settings

log = logging.getLogger("certd.certbot")

# Lines of certbot's output that explain nothing.
_NOISE = re.compile(
    r"^(Saving debug log|Ask for help|See the logfile|- - -|Processing |Plugins selected|"
    r"Account registered|If you like Certbot|\s*\* Donating|NEXT STEPS|$)"
)
_FAILED_RENEWAL = re.compile(r"Failed to renew certificate (\S+) with error: (.*)")
_DOING = ("Requesting a certificate for", "Renewing an existing certificate", "Command failed:")
_TRACEBACK = "Traceback (most recent call last):"
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_MAX_REASON = 400


class CertbotError(Exception):
    """certbot failed; the message is the command and certbot's explanation (for the log),
    `reason` what went wrong in a sentence (for the admin: no command line, no traceback)."""

    def __init__(
        self, message: str, failed: dict[str, str] | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.failed = failed or {}  # lineage name -> its error, when certbot names them
        self.reason = reason or message


@dataclass(frozen=True)
class Run:
    argv: list[str]
    output: str
    seconds: float


def explain(output: str) -> str:
    lines = [line.rstrip() for line in output.splitlines()]
    useful = [line for line in lines if not _NOISE.match(line)]
    return "\n".join(useful[-20:]) or "no output"


def reason(output: str, server: str) -> str:
    """What went wrong, for a person: certbot's own explanation without the lines that say
    what it was doing, and for a crash (an unexpected error, a traceback) the exception's text
    without its class; a connection failure says which server it could not reach."""
    lines = [line.strip() for line in output.splitlines() if not _NOISE.match(line)]
    lines = [line for line in lines if line and not line.startswith(_DOING)]
    crashed = "An unexpected error occurred:" in lines or _TRACEBACK in lines
    if crashed:
        last = lines[-1] if lines else ""
        kind, _, text = last.partition(": ")
        if re.fullmatch(r"[\w.]+", kind) and text:
            if "ConnectionError" in kind or "Timeout" in kind:
                cause = _ERRNO.search(text)
                detail = f": {cause[1].strip()}" if cause else ""
                return f"Cannot reach the certificate authority at {server}{detail}"
            last = text
        lines = [last]
    text = " ".join(lines) or "certbot failed without saying why"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


class Certbot:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()

    def _base(self, subcommand: str) -> list[str]:
        config, work, logs = self.settings.certbot_dirs
        return [
            self.settings.certbot_command,
            subcommand,
            "--non-interactive",
            f"--config-dir={config}",
            f"--work-dir={work}",
            f"--logs-dir={logs}",
            "--max-log-backups=20",
        ]

    def certonly_argv(self, name: str, domains: Sequence[str], email: str) -> list[str]:
        settings = self.settings
        account = (
            [f"--email={email}", "--no-eff-email"]
            if email
            else ["--register-unsafely-without-email"]
        )
        return [
            *self._base("certonly"),
            "--agree-tos",
            *account,
            f"--server={settings.acme_server}",
            "--authenticator=dns-cloudflare",
            f"--dns-cloudflare-credentials={settings.cloudflare_credentials.absolute()}",
            f"--dns-cloudflare-propagation-seconds={settings.dns_propagation_seconds}",
            "--preferred-challenges=dns-01",
            "--key-type=ecdsa",
            f"--cert-name={name}",
            *(f"--domain={domain}" for domain in domains),
        ]

    def renew_argv(self) -> list[str]:
        return [*self._base("renew"), "--no-random-sleep-on-renew"]

    def obtain(self, name: str, domains: Sequence[str], email: str) -> Run:
        credentials = self.settings.cloudflare_credentials.absolute()
        if not credentials.is_file():
            raise CertbotError(
                f"Cloudflare credentials not found at {credentials}: create it with the line "
                "`dns_cloudflare_api_token = <token>` (a token with Zone:DNS:Edit permission)"
            )
        return self.run(self.certonly_argv(name, domains, email))

    def renew(self) -> Run:
        return self.run(self.renew_argv())

    def run(self, argv: list[str]) -> Run:
        """Run certbot (waiting for any other run to finish first); CertbotError if it fails."""
        for folder in self.settings.certbot_dirs:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**os.environ, **self.settings.certbot_env}
        with self._lock:
            started = time.monotonic()
            log.info("certbot", extra={"fields": {"command": argv[1]}})
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    timeout=self.settings.certbot_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                late = f"certbot did not finish within {self.settings.certbot_timeout:g}s"
                raise CertbotError(
                    f"Command failed: {shlex.join(argv)}\n{late}", reason=late
                ) from exc
            except OSError as exc:
                raise CertbotError(
                    f"Command failed: {shlex.join(argv)}\n{exc}",
                    reason=f"certbot did not run: {exc}",
                ) from exc
            seconds = time.monotonic() - started
        if done.returncode != 0:
            failed = dict(_FAILED_RENEWAL.findall(done.stdout))
            raise CertbotError(
                f"Command failed: {shlex.join(argv)}\n{explain(done.stdout)}",
                failed,
                reason(done.stdout, self.settings.acme_server),
            )
        return Run(argv, done.stdout, seconds)
