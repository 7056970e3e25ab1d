import pytest

from shared.targets import Upstream, parse_target_urls


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://h:1234", [Upstream("http://h:1234", "/v1")]),
        ("http://h:1234/v1", [Upstream("http://h:1234", "/v1")]),
        ("http://h:1234/v1/", [Upstream("http://h:1234", "/v1")]),
        ("https://h/api/v1", [Upstream("https://h", "/api/v1")]),
        ("http://h/api", [Upstream("http://h", "/api")]),
        ("localhost:11434", [Upstream("http://localhost:11434", "/v1")]),
        ("http://h:1|key-1", [Upstream("http://h:1", "/v1", "key-1")]),
        ("http://h:1| key-1 |ignored", [Upstream("http://h:1", "/v1", "key-1")]),
        (
            " http://a:1 , http://b:2|k ,",
            [Upstream("http://a:1", "/v1"), Upstream("http://b:2", "/v1", "k")],
        ),
        ("http://[::1]:8000", [Upstream("http://[::1]:8000", "/v1")]),
        ("http://user:pw@h:1/v1?x=1#f", [Upstream("http://h:1", "/v1", credentials="user:pw")]),
        ("", []),
    ],
)
def test_parse_target_urls_grammar(value, expected):
    assert list(parse_target_urls(value)) == expected


@pytest.mark.parametrize("value", ["ftp://h/v1", "http://h:99999", "http://", "http://a:1,:x"])
def test_parse_target_urls_rejects_bad_entries_with_position(value):
    with pytest.raises(ValueError, match="TARGET_URLS entry"):
        parse_target_urls(value)


def test_upstream_repr_hides_key():
    assert "secret" not in repr(Upstream("http://h", "/v1", "secret"))


def test_concurrency_is_an_option_after_the_url_in_any_order():
    [a, b, c] = parse_target_urls("http://a:1|key|concurrency=4, b:2|concurrency=2, http://c/v1|k2")
    assert (a.key, a.concurrency) == ("key", 4)
    assert (b.key, b.concurrency, b.url) == ("", 2, "http://b:2/v1")
    assert (c.key, c.concurrency) == ("k2", 0)
    assert "concurrency=4" in repr(a) and "key" not in repr(a).replace("key=***", "")
    for bad in ("a:1|concurrency=0", "a:1|concurrency=x", "a:1|k|concurrency="):
        with pytest.raises(ValueError, match="concurrency must be a positive integer"):
            parse_target_urls(bad)
