"""`data/upstreams.json`: the upstreams and the model aliases, managed at runtime.

    {"version": 1,
     "upstreams": [{"id": "3f9a0c1d", "name": "gpu box", "url": "https://gpu:8000/v1",
                    "auth": "bearer",          # or "api-key" (Azure), or "basic" ("user:pass")
                    "key": "sk-...",           # the credentials for `auth`; "" for none
                    "concurrency": 4,          # requests in flight at most; null: no cap
                    "requestsPerMinute": 600,  # requests sent to it a minute; null: no limit
                    "tokensPerMinute": 200000, # tokens it may answer a minute; null: no limit
                    "verify": true,            # TLS verification; null: UPSTREAM_VERIFY
                    "caPem": "-----BEGIN...",  # CA certificates to trust; null: the global ones
                    "proxy": "none",           # "none", an http:// proxy, null: the environment's
                    "keepalive": 30,           # idle connection seconds; null: UPSTREAM_KEEPALIVE
                    "models": ["llama*"]}],    # glob patterns of its models to serve; null: all
     "aliases": [{"name": "chat", "strategy": "weighted",  # or "least-busy", "latency"
                  "fallback": "chat-long",     # an alias to try when these refuse; optional
                  "deployments": [
                    {"upstream": "3f9a0c1d", "model": "llama-3-70b", "weight": 3, "priority": 0},
                    {"upstream": "target-2", "model": "qwen2.5:72b", "weight": 1, "priority": 1}]}]}

Precedence: while the file does not exist, the upstreams are TARGET_URLS's (`from_targets`, with
ids `target-1`, `target-2`...) and there are no aliases; the first change through the api writes
the file, seeded from TARGET_URLS, and from then on the file alone says what the upstreams are.
Entries seeded from TARGET_URLS keep its TLS file options (`caFile`, `certFile`, `certKeyFile`),
which only TARGET_URLS can set (the api takes no file path).

The api writes the file (under its lock, atomically, mode 0600: it holds credentials); the proxy
workers watch it. Every field is checked here, with one set of rules for both (a hand-edited file
that breaks one is refused whole, and the proxy keeps what it had). An alias is a public model
name served by one or more deployments (an upstream and the model name it knows): the lowest
`priority` first; within a priority, drawn by `weight` (strategy "weighted", the default), or
the one with the fewest requests in flight first, ties drawn by weight ("least-busy"), or the
one whose recent answers started soonest ("latency": an average of its time to first token). An
alias may name a `fallback` alias, used when every deployment refused or the context was too
long (services/proxy/fallbacks.py); fallbacks never come back to an alias already in the chain,
and a chain has at most MAX_FALLBACKS of them.

Request and token limits (`requestsPerMinute`, `tokensPerMinute`) belong to the upstream, not
to an alias's deployment: what they stand for is the upstream's (a provider's quota on the
gateway's key, a GPU box's capacity), which every request sent to it draws from, whether it
named an alias or the upstream's own model, and whichever alias it came through. Counted per
deployment, two aliases on one upstream, or a client naming its model directly, would overdraw
it. See services/proxy/upstream_limits.py.
"""

from __future__ import annotations

import json
import re
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared import files
from shared.targets import Upstream, check_proxy, parse_target

MAX_UPSTREAMS = 100
MAX_ALIASES = 500
MAX_DEPLOYMENTS = 50
MAX_PATTERNS = 200
MAX_CA_PEM = 1024 * 1024
MAX_FALLBACKS = 3  # aliases a request may fall back to, one after another

# A model name as clients and upstreams write them: `gpt-4o`, `meta-llama/Llama-3-8B`,
# `qwen2.5:7b`, `org/model@rev`.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}")
# A glob pattern over model names (fnmatch's `*`, `?` and `[...]` besides).
_PATTERN = re.compile(r"[A-Za-z0-9._:/@+*?\[\]!-]{1,256}")
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_KEY = re.compile(r"[\x21-\x7e]{0,4096}")  # visible ASCII: it goes into a header as is
_NAME = re.compile(r"[^\x00-\x1f\x7f]{0,100}")


class FleetError(Exception):
    """upstreams.json exists but cannot be read or breaks a rule; the message says which."""


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if pattern.fullmatch(value) is None:
            raise ValueError(f"not a valid {what}")
        return value

    return check


def _check_url(value: str) -> str:
    """An upstream's base URL, normalised as TARGET_URLS's are (`http://h:8000` is
    `http://h:8000/v1`); credentials go in `key` with `auth` "basic", not in the URL."""
    if any(c in value for c in "|,?# \t\r\n") or "://" not in value:
        raise ValueError("must be an http(s):// URL without query, spaces, `|` or `,`")
    upstream = parse_target(value)
    if upstream.credentials:
        raise ValueError('give credentials in "key" with auth "basic", not in the URL')
    return upstream.url


def _check_proxy(value: str) -> str:
    return value if value == "none" else check_proxy(value)


def _check_ca(value: str) -> str:
    if len(value) > MAX_CA_PEM:
        raise ValueError(f"longer than {MAX_CA_PEM} characters")
    try:
        ssl.create_default_context(cadata=value)
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"not PEM certificates: {exc}") from None
    return value


ModelName = Annotated[str, AfterValidator(_matching(_MODEL_NAME, "model name"))]
Pattern = Annotated[str, AfterValidator(_matching(_PATTERN, "model pattern"))]
Id = Annotated[str, AfterValidator(_matching(_ID, "id (a-z, 0-9 and -)"))]
Key = Annotated[str, AfterValidator(_matching(_KEY, "key (visible ASCII, at most 4096)"))]
Name = Annotated[str, AfterValidator(_matching(_NAME, "name (at most 100, no control)"))]
Url = Annotated[str, AfterValidator(_check_url)]
ProxySetting = Annotated[str, AfterValidator(_check_proxy)]
CaPem = Annotated[str, AfterValidator(_check_ca)]
Auth = Literal["bearer", "api-key", "basic"]
Concurrency = Annotated[int, Field(ge=1, le=100_000)]
PerMinute = Annotated[int, Field(ge=1, le=1_000_000_000)]
Keepalive = Annotated[float, Field(ge=0, le=3600)]
Patterns = Annotated[list[Pattern], Field(min_length=1, max_length=MAX_PATTERNS)]

_STRICT = ConfigDict(extra="forbid", strict=True)


class UpstreamSettings(BaseModel):
    """What the admin sets for an upstream (the api's body for a new one)."""

    model_config = _STRICT

    name: Name = ""
    url: Url
    auth: Auth = "bearer"
    key: Key = ""
    concurrency: Concurrency | None = None
    requestsPerMinute: PerMinute | None = None
    tokensPerMinute: PerMinute | None = None
    verify: bool | None = None
    caPem: CaPem | None = None
    proxy: ProxySetting | None = None
    keepalive: Keepalive | None = None
    models: Patterns | None = None

    @model_validator(mode="after")
    def _basic_needs_a_pair(self) -> UpstreamSettings:
        if self.auth == "basic" and ":" not in self.key:
            raise ValueError('auth "basic" needs "key" as user:password')
        return self


class UpstreamEntry(UpstreamSettings):
    """An upstream as the file holds it."""

    id: Id
    # Only from TARGET_URLS (the api never takes a file path): TLS files of a seeded entry.
    caFile: str | None = None
    certFile: str | None = None
    certKeyFile: str | None = None

    def upstream(self, index: int) -> Upstream:
        """The proxy's view of it, `index` its position from 1."""
        target = parse_target(self.url)
        basic = self.auth == "basic"
        return Upstream(
            target.origin,
            target.path,
            key="" if basic else self.key,
            concurrency=self.concurrency or 0,
            requests_per_minute=self.requestsPerMinute or 0,
            tokens_per_minute=self.tokensPerMinute or 0,
            auth="bearer" if basic else self.auth,
            credentials=self.key if basic else "",
            proxy=None if self.proxy is None else ("" if self.proxy == "none" else self.proxy),
            ca=self.caFile or "",
            verify=self.verify,
            cert=self.certFile or "",
            cert_key=self.certKeyFile or "",
            keepalive=self.keepalive,
            ca_data=self.caPem or "",
            models=None if self.models is None else tuple(self.models),
            index=index,
            id=self.id,
        )


class Deployment(BaseModel):
    """One way to serve an alias: this upstream, asked for this model."""

    model_config = _STRICT

    upstream: Id
    model: ModelName
    weight: int = Field(default=1, ge=1, le=1000)
    priority: int = Field(default=0, ge=0, le=100)  # the lowest is tried first


Strategy = Literal["weighted", "least-busy", "latency"]


class Alias(BaseModel):
    model_config = _STRICT

    name: ModelName
    deployments: list[Deployment] = Field(min_length=1, max_length=MAX_DEPLOYMENTS)
    strategy: Strategy = "weighted"  # how a priority's deployments are chosen
    fallback: ModelName | None = None  # the alias to try when this one's deployments refused


class Fleet(BaseModel):
    model_config = _STRICT

    version: Literal[1] = 1
    upstreams: list[UpstreamEntry] = Field(default_factory=list, max_length=MAX_UPSTREAMS)
    aliases: list[Alias] = Field(default_factory=list, max_length=MAX_ALIASES)

    @model_validator(mode="after")
    def _consistent(self) -> Fleet:
        ids = [u.id for u in self.upstreams]
        if len(ids) != len(set(ids)):
            raise ValueError("two upstreams have the same id")
        names = [a.name for a in self.aliases]
        if len(names) != len(set(names)):
            raise ValueError("two aliases have the same name")
        for alias in self.aliases:
            for deployment in alias.deployments:
                if deployment.upstream not in ids:
                    raise ValueError(
                        f"alias {alias.name!r} names upstream {deployment.upstream!r},"
                        " which does not exist"
                    )
        by_name = {a.name: a for a in self.aliases}
        for alias in self.aliases:
            chain, then = [alias.name], alias.fallback
            while then is not None:
                if then not in by_name:
                    raise ValueError(
                        f"alias {chain[-1]!r} falls back to {then!r}, which is no alias"
                    )
                if then in chain:
                    raise ValueError(f"alias {alias.name!r} falls back to itself through {then!r}")
                chain.append(then)
                then = by_name[then].fallback
            if len(chain) - 1 > MAX_FALLBACKS:
                raise ValueError(
                    f"alias {alias.name!r} has more than {MAX_FALLBACKS} fallbacks in a chain"
                )
        return self

    def targets(self) -> tuple[Upstream, ...]:
        return tuple(entry.upstream(i) for i, entry in enumerate(self.upstreams, start=1))

    def find(self, upstream_id: str) -> UpstreamEntry | None:
        return next((u for u in self.upstreams if u.id == upstream_id), None)


def new_id() -> str:
    return secrets.token_hex(4)


def describe(exc: ValidationError) -> str:
    """A validation error as one line a person can act on: where, and what is wrong."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def from_targets(targets: tuple[Upstream, ...]) -> Fleet:
    """The fleet TARGET_URLS describes: what is served while there is no file, and the file's
    first content."""
    entries = []
    for position, target in enumerate(targets, start=1):
        basic = bool(target.credentials)
        proxy = target.proxy
        entries.append(
            UpstreamEntry(
                id=f"target-{position}",
                url=target.url,
                auth="basic" if basic else target.auth,  # type: ignore[arg-type]
                key=target.credentials if basic else target.key,
                concurrency=target.concurrency or None,
                verify=target.verify,
                proxy=None if proxy is None else (proxy or "none"),
                keepalive=target.keepalive,
                caFile=target.ca or None,
                certFile=target.cert or None,
                certKeyFile=target.cert_key or None,
            )
        )
    return Fleet(upstreams=entries)


def parse_fleet(data: bytes) -> Fleet:
    """The file's content, checked; raises FleetError saying what is wrong."""
    try:
        return Fleet.model_validate_json(data)
    except ValidationError as exc:
        raise FleetError(f"upstreams.json: {describe(exc)}") from None


def read_fleet(path: Path) -> Fleet | None:
    """The file's fleet; None if there is no file. Raises FleetError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FleetError(f"{path}: {exc.strerror}") from None
    return parse_fleet(data)


def dump(fleet: Fleet) -> bytes:
    document = fleet.model_dump(mode="json", exclude_none=True)
    return (json.dumps(document, indent=2) + "\n").encode()


class FleetFile:
    """Changing `data/upstreams.json` (the api): read-modify-write under its lock, atomic."""

    def __init__(self, path: Path, seed: tuple[Upstream, ...]) -> None:
        self.path = path
        self.seed = seed

    def read(self) -> tuple[Fleet, bool]:
        """The fleet in force, and whether it comes from the file (else TARGET_URLS)."""
        fleet = read_fleet(self.path)
        return (from_targets(self.seed), False) if fleet is None else (fleet, True)

    def change(self, edit: Callable[[Fleet], Fleet]) -> Fleet:
        """Apply `edit` to the fleet in force and save the result, checked as the file is.
        Raises FleetError (an unreadable file: nothing is written over it) or ValueError from
        `edit` or the check."""
        with files.locked(self.path):
            fleet, _ = self.read()
            changed = edit(fleet.model_copy(deep=True))
            try:  # the whole, as a reader will see it: ids unique, aliases name upstreams...
                checked = Fleet.model_validate_json(dump(changed))
            except ValidationError as exc:
                raise ValueError(describe(exc)) from None
            files.write_atomic(self.path, dump(checked), 0o600)
            return checked
