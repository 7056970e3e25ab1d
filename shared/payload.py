"""The answer to a `/v1` request body over PAYLOAD_LIMIT: the same words whether the proxy gives
it (services/proxy/errors.py) or nginx does, refusing a body it has not read
(services/certd/nginx_conf.py renders it into nginx's config)."""

from __future__ import annotations

import json

CODE = "payload_too_large"


def too_large_message(limit: int) -> str:
    return f"Request body is larger than the limit of {limit} bytes"


def too_large_body(limit: int) -> bytes:
    """The OpenAI-shaped error, as the proxy writes every error."""
    error = {
        "message": too_large_message(limit),
        "type": "invalid_request_error",
        "param": None,
        "code": CODE,
    }
    return json.dumps({"error": error}).encode()
