"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`.

`ProxyError` is the one exception the proxy raises for anything a client should be told; the
app turns it into a response (or, once a stream has started, into a final SSE error event).
"""

from __future__ import annotations

import json

from shared import payload


class ProxyError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type: str = "invalid_request_error",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.headers = headers

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": None, "code": self.code}
        return json.dumps({"error": error}).encode()


def missing_key() -> ProxyError:
    return key_refused(
        "Missing API key. Send it as 'Authorization: Bearer <key>'.", "missing_api_key"
    )


def invalid_key() -> ProxyError:
    return key_refused("Invalid API key", "invalid_api_key")


def not_found(path: str) -> ProxyError:
    return ProxyError(404, f"Unknown path: {path}", "unknown_url")


def model_not_found(model: str) -> ProxyError:
    return ProxyError(
        404, f"The model '{model}' does not exist or no upstream serves it", "model_not_found"
    )


def payload_too_large(limit: int) -> ProxyError:
    return ProxyError(413, payload.too_large_message(limit), payload.CODE)


def invalid_json(detail: str) -> ProxyError:
    return ProxyError(400, f"Request body is not valid JSON: {detail}", "invalid_json")


def no_upstream() -> ProxyError:
    return ProxyError(
        503, "No upstream is configured (TARGET_URLS is empty)", "no_upstream", type="server_error"
    )


def bad_gateway(upstream: str) -> ProxyError:
    """`upstream` is its label ("upstream 2"): internal host names stay in the logs."""
    return _failed(f"The {upstream} could not be reached", "upstream_unreachable")


def certificate_refused(upstream: str) -> ProxyError:
    return _failed(
        f"The {upstream} could not be reached: its TLS certificate was refused",
        "upstream_certificate_refused",
    )


def upstream_dropped(upstream: str) -> ProxyError:
    return _failed(
        f"The {upstream} closed the connection without answering (the request was not sent"
        " again: it may have run)",
        "upstream_dropped",
    )


def bad_answer(upstream: str, detail: str) -> ProxyError:
    return _failed(f"The {upstream} sent a malformed answer: {detail}", "upstream_bad_answer")


def models_unknown(model: str, reasons: list[str]) -> ProxyError:
    return _failed(
        f"No reachable upstream serves the model '{model}', and the models of some could not"
        f" be read: {'; '.join(reasons)}",
        "upstream_unreachable",
    )


def upstream_cut() -> ProxyError:
    """The last event of a stream the upstream stopped sending in the middle."""
    return ProxyError(
        502, "The upstream stopped in the middle of the answer", "upstream_cut", type="server_error"
    )


def gateway_timeout(upstream: str) -> ProxyError:
    return _failed(f"The {upstream} did not answer in time", "upstream_timeout", 504)


def internal_error() -> ProxyError:
    return ProxyError(
        500, "The proxy failed to handle this request", "internal_error", type="server_error"
    )


def key_refused(message: str, code: str) -> ProxyError:
    return ProxyError(401, message, code, headers=((b"www-authenticate", b"Bearer"),))


def model_required() -> ProxyError:
    return ProxyError(
        403,
        'This API key may use only some models: name one in the request\'s "model"',
        "model_required",
    )


def model_not_allowed(model: str) -> ProxyError:
    return ProxyError(403, f"This API key may not use the model '{model}'", "model_not_allowed")


def _failed(message: str, code: str, status: int = 502) -> ProxyError:
    """An upstream that failed this request (502, or 504 for a timeout): not the client's fault."""
    return ProxyError(status, message, code, type="server_error")


def _busy(message: str, code: str) -> ProxyError:
    """A 503 for a busy upstream's queue: worth trying again in a second."""
    return ProxyError(503, message, code, type="server_error", headers=((b"retry-after", b"1"),))


def upstream_busy(upstream: str) -> ProxyError:
    return _busy(f"Every connection to the {upstream} is in use", "upstream_busy")


def queue_full(upstream: str) -> ProxyError:
    return _busy(f"The {upstream} is busy and its queue is full", "upstream_queue_full")


def queue_timeout(upstream: str, seconds: float) -> ProxyError:
    return _busy(
        f"The {upstream} stayed busy: no turn came within {seconds:g} s",
        "upstream_queue_timeout",
    )


def ambiguous_model(names: list[str]) -> ProxyError:
    """A body that names its model in a way upstreams read differently."""
    return ProxyError(
        400,
        "The request names its model ambiguously ("
        + ", ".join(repr(name) for name in names)
        + '): send exactly one top-level "model"',
        "ambiguous_model",
    )


def invalid_multipart(detail: str) -> ProxyError:
    return ProxyError(
        400, f"Request body is not a valid multipart form: {detail}", "invalid_multipart"
    )
