"""The site: what the admin wants nginx and the certificates to be, and what certd made of it.

Two files, each with one writer:

- `data/site.json`, the desired state, written only by the api (`update_site`) and watched by
  certd. Every write bumps `generation`. One-shot requests (reload nginx, renew certificates) are
  counters here too, so nothing calls certd over the network:

      {"generation": 7, "domains": ["llm.example.com"], "cidrGroups": ["203.0.113.0/24"],
       "acmeEmail": "", "httpMode": "redirect", "customConfig": null,
       "certificates": [{"name": "llm.example.com", "domains": ["llm.example.com"]}],
       "reloadRequested": 2, "renewRequested": 1}

- `data/certd/status.json`, the observed state, written only by certd (`CertdStatus`): the
  generation it last applied and how that went, nginx's state, every certificate, and the last
  reload and renewal it was asked for.

Domains and CIDR groups are validated here, by the api before it writes (a bad one is a 400) and
by certd again before it renders anything: neither can carry text into nginx's configuration or
into a command line.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

from shared import files
from shared.files import write_json_atomic

HttpMode = Literal["redirect", "serve"]
HTTP_MODES: tuple[HttpMode, ...] = get_args(HttpMode)
MAX_DOMAINS = 100  # Let's Encrypt's limit of names per certificate

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,63}")
_NETWORK_CHARS = re.compile(r"[0-9A-Fa-f:./]+")


class SiteError(ValueError):
    """A value or a file that does not describe a valid site; the message says why."""


# Validation ---------------------------------------------------------------------------------


def valid_domain(value: object) -> str:
    """A host name for a certificate and nginx's `server_name`, lower-cased.

    Letters, digits and hyphens in dot-separated labels, at least two labels, a top-level label
    that is not all digits (no IP addresses), and optionally `*.` as the whole first label.
    """
    if not isinstance(value, str):
        raise SiteError(f"Invalid domain: {value!r} is not a string")
    name = value.strip().lower().removesuffix(".")
    host = name.removeprefix("*.")
    labels = host.split(".")
    if (
        not name
        or len(name) > 253
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise SiteError(f"Invalid domain: {value!r}")
    return name


def valid_domains(value: object) -> tuple[str, ...]:
    """A non-empty list of distinct host names, in the given order."""
    if not isinstance(value, list | tuple) or not value:
        raise SiteError("Invalid domains: expected a non-empty list of domain names")
    if len(value) > MAX_DOMAINS:
        raise SiteError(f"Invalid domains: at most {MAX_DOMAINS} names per certificate")
    names = [valid_domain(v) for v in value]
    return tuple(dict.fromkeys(names))


def valid_cidr(value: object) -> str:
    """An IPv4 or IPv6 network (or a single address), normalized: `10.1.2.3/8` is `10.0.0.0/8`."""
    if not isinstance(value, str) or not _NETWORK_CHARS.fullmatch(value.strip()):
        raise SiteError(f"Invalid CIDR group: {value!r}")
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise SiteError(f"Invalid CIDR group: {value!r}") from exc
    return network.with_prefixlen


def valid_cidrs(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise SiteError("Invalid CIDR groups: expected a list")
    return tuple(dict.fromkeys(valid_cidr(v) for v in value))


def valid_email(value: object) -> str:
    if not isinstance(value, str) or (value and not _EMAIL.fullmatch(value)):
        raise SiteError(f"Invalid email address: {value!r}")
    return value


def valid_http_mode(value: object) -> HttpMode:
    for mode in HTTP_MODES:
        if value == mode:
            return mode
    raise SiteError(f"Invalid httpMode: {value!r} (use one of {', '.join(HTTP_MODES)})")


def certificate_name(domains: Sequence[str]) -> str:
    """certbot's lineage name for these domains: the first one, without a wildcard label."""
    return domains[0].removeprefix("*.")


def covers(certificate_domains: Sequence[str], host: str) -> bool:
    """Does a certificate for `certificate_domains` cover `host` (wildcards: one label)?"""
    for name in certificate_domains:
        if name == host:
            return True
        if (
            name.startswith("*.")
            and host.count(".") == name.count(".")
            and (host.split(".", 1)[1] == name[2:])
        ):
            return True
    return False


# site.json ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateRequest:
    name: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class Site:
    generation: int = 0
    domains: tuple[str, ...] = ()
    cidr_groups: tuple[str, ...] = ()
    acme_email: str = ""
    http_mode: HttpMode = "redirect"
    custom_config: str | None = None
    certificates: tuple[CertificateRequest, ...] = field(default=())
    reload_requested: int = 0
    renew_requested: int = 0

    def with_certificate(self, domains: Sequence[str]) -> Site:
        """This site, also wanting a certificate for `domains` (replacing one of the same name)."""
        request = CertificateRequest(certificate_name(domains), tuple(domains))
        others = tuple(c for c in self.certificates if c.name != request.name)
        return replace(self, certificates=(*others, request))

    def wanted_certificates(self) -> tuple[CertificateRequest, ...]:
        """The certificates asked for, plus one for the site's domains that none covers."""
        uncovered = [
            d for d in self.domains if not any(covers(c.domains, d) for c in self.certificates)
        ]
        if not uncovered:
            return self.certificates
        extra = CertificateRequest(certificate_name(uncovered), tuple(uncovered))
        return (*(c for c in self.certificates if c.name != extra.name), extra)

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "domains": list(self.domains),
            "cidrGroups": list(self.cidr_groups),
            "acmeEmail": self.acme_email,
            "httpMode": self.http_mode,
            "customConfig": self.custom_config,
            "certificates": [
                {"name": c.name, "domains": list(c.domains)} for c in self.certificates
            ],
            "reloadRequested": self.reload_requested,
            "renewRequested": self.renew_requested,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Site:
        if not isinstance(raw, dict):
            raise SiteError("expected a JSON object")
        counters = {}
        for name in ("generation", "reloadRequested", "renewRequested"):
            value = raw.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SiteError(f"{name} must be a non-negative integer")
            counters[name] = value
        custom = raw.get("customConfig")
        if custom is not None and not isinstance(custom, str):
            raise SiteError("customConfig must be a string or null")
        certificates = raw.get("certificates", [])
        if not isinstance(certificates, list):
            raise SiteError("certificates must be a list")
        requests = []
        for item in certificates:
            if not isinstance(item, dict):
                raise SiteError("certificates[] must be objects")
            domains = valid_domains(item.get("domains"))
            requests.append(CertificateRequest(certificate_name(domains), domains))
        domains = raw.get("domains", [])
        return cls(
            generation=counters["generation"],
            domains=valid_domains(domains) if domains else (),
            cidr_groups=valid_cidrs(raw.get("cidrGroups", [])),
            acme_email=valid_email(raw.get("acmeEmail", "")),
            http_mode=valid_http_mode(raw.get("httpMode", "redirect")),
            custom_config=custom,
            certificates=tuple(requests),
            reload_requested=counters["reloadRequested"],
            renew_requested=counters["renewRequested"],
        )


def read_site(path: Path) -> Site:
    """The site in `path`; a missing file is the empty site. Raises SiteError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Site()
    except OSError as exc:
        raise SiteError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return Site.from_json(json.loads(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SiteError(f"{path} is not a valid site: {exc}") from exc


def write_site(path: Path, site: Site) -> None:
    write_json_atomic(path, site.to_json(), mode=0o600)


def update_site(path: Path, change: Callable[[Site], Site]) -> Site:
    """Read, change and write the site under a lock, with the next generation; returns it.

    `change` may raise (SiteError) to write nothing.
    """
    with files.locked(path):
        current = read_site(path)
        updated = replace(change(current), generation=current.generation + 1)
        write_site(path, updated)
        return updated


# certd/status.json --------------------------------------------------------------------------


class NginxState(TypedDict):
    ok: bool
    error: str | None
    at: float


class CertificateState(TypedDict):
    name: str
    domains: list[str]
    notAfter: str | None
    lastRenewal: str | None
    lastError: str | None


class Outcome(TypedDict):
    """How certd's handling of a generation, a reload or a renewal went."""

    handled: int  # the generation, or the reload/renew counter, this outcome is for
    ok: bool
    message: str | None
    at: float


class CertdStatus(TypedDict):
    appliedGeneration: int
    applied: Outcome
    nginx: NginxState
    certificates: list[CertificateState]
    reload: Outcome
    renew: Outcome
    defaultConfig: str  # server.conf as certd renders it for the site, without customConfig


def no_outcome() -> Outcome:
    return {"handled": 0, "ok": True, "message": None, "at": 0.0}


def read_status(path: Path) -> CertdStatus | None:
    """certd's last report, or None if there is none (yet) or it cannot be read."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("appliedGeneration"), int):
        return None
    return raw  # type: ignore[return-value]  # written by certd from this same TypedDict


def write_status(path: Path, status: CertdStatus) -> None:
    write_json_atomic(path, status, mode=0o644)


def _merge_outcomes(outcomes: Sequence[tuple[str, Outcome]]) -> Outcome:
    failed = [(replica, o) for replica, o in outcomes if not o["ok"]]
    messages = [f"{replica}: {o['message']}" for replica, o in failed if o["message"]]
    return {
        "handled": min(o["handled"] for _, o in outcomes),
        "ok": not failed,
        "message": "; ".join(messages) or None,
        "at": max(o["at"] for _, o in outcomes),
    }


def merge_statuses(reports: Sequence[tuple[str, CertdStatus]]) -> CertdStatus | None:
    """The status of several replicas' certds, (replica, report) in replica order, as one: a
    generation, a reload or a renewal is handled once every replica handled it; nginx is fine
    if it is on every replica, and a certificate if it is everywhere (its earliest expiry, its
    errors named by replica). One report is itself; none is None."""
    if not reports:
        return None
    if len(reports) == 1:
        return reports[0][1]

    def outcomes(name: Literal["applied", "reload", "renew"]) -> list[tuple[str, Outcome]]:
        return [(replica, s.get(name, no_outcome())) for replica, s in reports]

    nginx_errors = [f"{r}: {s['nginx']['error']}" for r, s in reports if not s["nginx"]["ok"]]
    certificates: dict[str, CertificateState] = {}
    for replica, status in reports:
        for cert in status["certificates"]:
            seen = certificates.get(cert["name"])
            error = f"{replica}: {cert['lastError']}" if cert["lastError"] else None
            if seen is None:
                certificates[cert["name"]] = {**cert, "lastError": error}
                continue
            ends = [seen["notAfter"], cert["notAfter"]]
            renewals = [seen["lastRenewal"], cert["lastRenewal"]]
            errors = [e for e in (seen["lastError"], error) if e]
            certificates[cert["name"]] = {
                **seen,
                "notAfter": None if None in ends else min(e for e in ends if e),
                "lastRenewal": None if None in renewals else min(r for r in renewals if r),
                "lastError": "; ".join(errors) or None,
            }
    # A certificate one replica does not list yet is not served there.
    for name, cert in certificates.items():
        if any(all(c["name"] != name for c in s["certificates"]) for _, s in reports):
            certificates[name] = {**cert, "notAfter": None, "lastRenewal": None}
    return {
        "appliedGeneration": min(s["appliedGeneration"] for _, s in reports),
        "applied": _merge_outcomes(outcomes("applied")),
        "nginx": {
            "ok": not nginx_errors,
            "error": "; ".join(nginx_errors) or None,
            "at": max(s["nginx"]["at"] for _, s in reports),
        },
        "certificates": list(certificates.values()),
        "reload": _merge_outcomes(outcomes("reload")),
        "renew": _merge_outcomes(outcomes("renew")),
        "defaultConfig": reports[0][1].get("defaultConfig", ""),
    }
