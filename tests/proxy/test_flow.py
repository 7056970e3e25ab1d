"""A request's Flow: what it costs its key is read from its row and the meter the relay left."""

from __future__ import annotations

from services.proxy.asgi import Response
from services.proxy.body import RequestBody
from services.proxy.flow import Flow
from services.proxy.limits import Admission, Policy
from services.proxy.usage import JsonMeter, SseMeter
from shared.analytics import RequestRow
from shared.apikeys import ApiKey


async def _nowhere(message: dict[str, object]) -> None:
    raise AssertionError("nothing is sent here")


def flow(body: bytes = b"x" * 40) -> Flow:
    policy = Policy.of(ApiKey.new("tester"))
    row = RequestRow("r", policy.key.id, "tester", 0, bytes_in=len(body))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
    return Flow(scope, policy, RequestBody(body), "application/json", row, Response(_nowhere), 0.0)


def test_the_upstreams_count_is_what_a_request_costs():
    f = flow()
    f.row.bytes_out, f.row.prompt_tokens, f.row.completion_tokens = 10, 7, 3
    f.meter = SseMeter()
    f.meter.pieces = 99  # not used: the upstream counted
    assert f.tokens_used() == 10


def test_without_a_count_the_pieces_relayed_and_a_quarter_of_the_body_are_charged():
    f = flow()
    f.row.bytes_out = 10
    sse = SseMeter()
    sse.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n' * 3)
    f.meter = sse
    assert f.tokens_used() == 3 + 40 // 4
    f.meter = JsonMeter("")  # a JSON answer without usage has no pieces
    assert f.tokens_used() == 40 // 4


def test_an_answer_never_relayed_costs_nothing():
    f = flow()
    assert f.meter is None and f.tokens_used() == 0


def test_the_keys_limit_headers_go_with_the_answer_once_admitted():
    f = flow()
    assert not f.limit_headers
    headers = [(b"x-ratelimit-limit-requests", b"5")]
    f.admission = Admission(f.policy, headers, False)
    assert f.limit_headers == headers
    assert (f.path, f.method) == ("/v1/chat/completions", "POST")
