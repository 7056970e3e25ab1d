"""What of an upstream's answer reaches the client, before its body is relayed.

Headers: an allowlist (`passed_to_client`). Upstreams add headers meant for their own operator
(LiteLLM's `x-litellm-key-spend`, `x-litellm-model-api-base` and cost headers, provider headers
prefixed `llm_provider-`, `openai-organization`, cookies, server versions): none of that is the
client's business, and a new one must not leak the day an upstream starts sending it. What
passes is what describes the body and what a client acts on:
- the body: `content-type`, `content-encoding`, `content-length`, `content-language`,
  `content-disposition` and `content-range`, `accept-ranges` (files and audio), and the
  caching headers `cache-control`, `etag`, `last-modified`, `expires`, `vary`, `date`;
- retrying: `retry-after`, `retry-after-ms` and `x-should-retry` (the openai SDKs read them on a
  429 or 5xx that the upstream answered);
- OpenAI's processing headers `openai-processing-ms` and `openai-version`.
Refused on purpose: the upstream's `x-ratelimit-*` (and Anthropic's `anthropic-ratelimit-*`).
They count what the gateway's own account has left at the upstream, shared by every key: they
would show one user the others' consumption and make SDKs that pace themselves by them wait for
nothing. A key with limits gets llmp's own `x-ratelimit-*`. The upstream's `x-request-id` gives
way to llmp's, the one its logs and analytics know; it is kept as `x-upstream-request-id`.

Status: an upstream that answers 401 refused llmp's own credentials (the client's key never
reaches it). Relayed, every SDK would report it as the user's key being wrong; it is a 502 that
says so, logged for the admin (`refused_credentials`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.proxy.errors import ProxyError

log = logging.getLogger("proxy.upstream")

PASSED = frozenset(
    {
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"content-language",
        b"content-disposition",
        b"content-range",
        b"accept-ranges",
        b"cache-control",
        b"etag",
        b"last-modified",
        b"expires",
        b"vary",
        b"date",
        b"retry-after",
        b"retry-after-ms",
        b"x-should-retry",
        b"openai-processing-ms",
        b"openai-version",
    }
)


def passed_to_client(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers (names in lower case) that the client may see; its request id
    renamed `x-upstream-request-id` (the one to quote to the upstream's operator)."""
    out = []
    for name, value in headers:
        if name in PASSED:
            out.append((name, value))
        elif name == b"x-request-id":
            out.append((b"x-upstream-request-id", value))
    return out


def refused_credentials(upstream: str, has_key: bool) -> ProxyError:
    """The error for an upstream's 401, logged: the gateway's key for it is wrong or missing."""
    log.error(
        "upstream refused the gateway's credentials",
        extra={"fields": {"upstream": upstream, "key_configured": has_key}},
    )
    configured = "" if has_key else " (TARGET_URLS gives it no key)"
    return ProxyError(
        502,
        f"The {upstream} refused the gateway's credentials{configured}; "
        "your API key was accepted. The gateway's administrator must fix its key for that "
        "upstream.",
        "upstream_auth_failed",
        type="server_error",
    )
