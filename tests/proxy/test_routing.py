import pytest

from services.proxy.body import RequestBody
from services.proxy.catalog import UpstreamState
from services.proxy.errors import ProxyError
from services.proxy.routing import rank, rank_any, request_model
from services.proxy.upstream import Endpoint
from shared.targets import Upstream


def states(*names):
    return [UpstreamState(Upstream(f"http://{n}", "/v1"), Endpoint("http", n, 80)) for n in names]


def test_request_model_from_json():
    assert request_model("application/json", RequestBody(b'{"model": "m", "stream": true}')) == "m"
    assert request_model("application/json; charset=utf-8", RequestBody(b'{"model" :"m"}')) == "m"
    assert request_model("", RequestBody(b'{"model": "m"}')) == "m"
    assert request_model("application/json", RequestBody(b'{"model": 3}')) is None
    assert request_model("application/json", RequestBody(b"[1]")) is None
    assert request_model("application/json", RequestBody(b"")) is None


def test_request_model_nested_model_members_fall_back_to_a_full_parse():
    body = (
        b'{"metadata": {"model": "inner"}, '
        b'"messages": [{"content": "say \\"model\\": \\"x\\""}], "model": "outer"}'
    )
    assert request_model("application/json", RequestBody(body)) == "outer"
    escaped = b'{"model": "we\\"ird", "x": 1}'
    assert request_model("application/json", RequestBody(escaped)) == 'we"ird'


def test_request_model_from_multipart_form():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n"
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b--\r\n'
    )
    assert request_model("multipart/form-data; boundary=b", RequestBody(body)) == "whisper-1"


def test_request_model_invalid_json_is_400():
    with pytest.raises(ProxyError) as caught:
        request_model("application/json", RequestBody(b'{"model": '))
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


def ambiguous(content_type: str, body: bytes) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        request_model(content_type, RequestBody(body))
    assert caught.value.status == 400
    return caught.value


def test_request_model_is_the_member_the_upstream_reads():
    # an escaped name is the top-level member; a nested "model" is not
    body = b'{"\\u006dodel": "forbidden", "messages": [], "metadata": {"model": "allowed"}}'
    assert request_model("application/json", RequestBody(body)) == "forbidden"
    assert (
        request_model("application/json", RequestBody(b'{"metadata": {"model": "allowed"}}'))
        is None
    )
    assert request_model("application/json", RequestBody(b'[{"model": "allowed"}]')) is None
    # what orjson refuses and Python's parser takes is read by Python's parser
    assert request_model("application/json", RequestBody(b'{"model": "m", "t": NaN}')) == "m"
    # a value with escapes
    assert request_model("application/json", RequestBody(b'{"model": "a\\u0062c"}')) == "abc"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "allowed", "model": "forbidden"}',
        b'{"model": "allowed", "messages": [], "\\u006dodel": "forbidden"}',
        b'{"mod\\u0065l": "allowed", "m\\u006fdel": "forbidden"}',
        b'{"model": "allowed", "Model": "forbidden"}',
        b'{"MODEL": "forbidden"}',
        b'{"model": "allowed", "t": NaN, "model": "forbidden"}',
    ],
)
def test_request_model_refuses_a_model_named_twice_or_in_another_case(body):
    assert ambiguous("application/json", body).code == "ambiguous_model"


def test_request_model_duplicates_below_the_top_level_are_not_ambiguous():
    body = b'{"model": "m", "metadata": {"model": "x", "model": "y"}, "tools": [{"model": 1}]}'
    assert request_model("application/json", RequestBody(body)) == "m"


def form(*parts: bytes) -> bytes:
    return b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + b"--b--\r\n"


MODEL_PART = b'Content-Disposition: form-data; name="model"\r\n\r\n'
FILE_PART = (
    b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n"
    b'Content-Disposition: form-data; name="model"\r\n\r\nnot this one'
)


def test_request_model_from_a_multipart_form_is_read_by_a_real_parser():
    multipart = "multipart/form-data; boundary=b"
    # text that looks like a part inside a file is file content
    assert (
        request_model(multipart, RequestBody(form(FILE_PART, MODEL_PART + b"whisper-1")))
        == "whisper-1"
    )
    assert request_model(multipart, RequestBody(form(FILE_PART))) is None
    assert (
        request_model('multipart/form-data; boundary="b"', RequestBody(form(MODEL_PART + b"m")))
        == "m"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (form(MODEL_PART + b"allowed", MODEL_PART + b"forbidden"), "ambiguous_model"),
        (
            form(
                MODEL_PART + b"allowed",
                b"Content-Disposition: form-data; NAME=model\r\n\r\nforbidden",
            ),
            "ambiguous_model",
        ),
        (
            form(b"Content-Disposition: form-data; name*=UTF-8''model\r\n\r\nforbidden"),
            "invalid_multipart",
        ),
        (
            form(b'Content-Disposition: form-data; name="x"; name="model"\r\n\r\nforbidden'),
            "invalid_multipart",
        ),
        (
            form(
                b'Content-Disposition: form-data; name="model"\r\n'
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=66orbidden"
            ),
            "invalid_multipart",
        ),
        (
            form(b'Content-Disposition: form-data; name="model"; filename="m"\r\n\r\nforbidden'),
            "invalid_multipart",
        ),
        (form(MODEL_PART + b"x" * 2000), "invalid_multipart"),
    ],
)
def test_request_model_refuses_an_ambiguous_multipart_form(body, code):
    assert ambiguous("multipart/form-data; boundary=b", body).code == code


def test_request_model_multipart_without_boundary_is_400():
    assert ambiguous("multipart/form-data", form(MODEL_PART + b"m")).code == "invalid_multipart"
