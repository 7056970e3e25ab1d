import pytest

from services.proxy.catalog import UpstreamState
from services.proxy.errors import ProxyError
from services.proxy.routing import rank, rank_any, request_model
from shared.targets import Upstream


def states(*names):
    return [UpstreamState(Upstream(f"http://{n}", "/v1")) for n in names]


def test_request_model_from_json():
    assert request_model("application/json", b'{"model": "m", "stream": true}') == "m"
    assert request_model("application/json; charset=utf-8", b'{"model" :"m"}') == "m"
    assert request_model("", b'{"model": "m"}') == "m"
    assert request_model("application/json", b'{"model": 3}') is None
    assert request_model("application/json", b"[1]") is None
    assert request_model("application/json", b"") is None


def test_request_model_nested_model_members_fall_back_to_a_full_parse():
    body = (
        b'{"metadata": {"model": "inner"}, '
        b'"messages": [{"content": "say \\"model\\": \\"x\\""}], "model": "outer"}'
    )
    assert request_model("application/json", body) == "outer"
    escaped = b'{"model": "we\\"ird", "x": 1}'
    assert request_model("application/json", escaped) == 'we"ird'


def test_request_model_from_multipart_form():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n"
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b--\r\n'
    )
    assert request_model("multipart/form-data; boundary=b", body) == "whisper-1"


def test_request_model_invalid_json_is_400():
    with pytest.raises(ProxyError) as caught:
        request_model("application/json", b'{"model": ')
    assert caught.value.status == 400 and caught.value.code == "invalid_json"


def test_rank_prefers_healthy_then_least_loaded():
    a, b, c = states("a", "b", "c")
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    assert rank([a, b, c], "m") == [b, c, a]
    b.healthy = False
    assert rank([a, b, c], "m") == [c, a, b]


def test_rank_ties_are_stable_per_model_and_spread_across_models():
    pool = states("a", "b", "c", "d")
    firsts = {rank(pool, f"model-{i}")[0].upstream.origin for i in range(40)}
    assert len(firsts) == 4  # different models start on different upstreams
    assert rank(pool, "x") == rank(pool, "x")


def test_rank_any_keeps_order_with_healthy_first():
    a, b, c = states("a", "b", "c")
    a.healthy = False
    assert rank_any([a, b, c]) == [b, c, a]
