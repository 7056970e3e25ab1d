import pytest
from pydantic import ValidationError

from shared.settings import load_settings, parse_size


def test_env_file_values_are_all_honoured(tmp_path, monkeypatch):
    for name in ("JWT_SECRET", "AUTH_USERNAME", "AUTH_PASSWORD", "PORT", "TARGET_URLS"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text(
        "JWT_SECRET=from-file-secret\nAUTH_USERNAME=boss\nAUTH_PASSWORD=pw-from-file\n"
        "PORT=9000\nTARGET_URLS=http://a:1,http://b:2|k\nPAYLOAD_LIMIT=50mb\n"
    )
    s = load_settings(str(env))
    assert (s.jwt_secret, s.auth_username, s.auth_password) == (
        "from-file-secret",
        "boss",
        "pw-from-file",
    )
    assert s.port == 9000 and s.payload_limit == 50 * 1024 * 1024
    assert [u.url for u in s.target_urls] == ["http://a:1/v1", "http://b:2/v1"]
    assert s.target_urls[1].key == "k"


def test_environment_overrides_env_file(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("PORT=9000\nAUTH_USERNAME=boss\n")
    monkeypatch.setenv("PORT", "9100")
    s = load_settings(str(env))
    assert s.port == 9100 and s.auth_username == "boss"


def test_bad_target_urls_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TARGET_URLS", "http://ok:1,ftp://bad")
    with pytest.raises(ValidationError, match="TARGET_URLS entry 2"):
        load_settings(str(tmp_path / "missing.env"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1mb", 1024**2),
        ("50MB", 50 * 1024**2),
        ("512kb", 512 * 1024),
        ("1024", 1024),
        ("1.5kb", 1536),
        (" 2 gb ", 2 * 1024**3),
    ],
)
def test_parse_size_like_the_bytes_library(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "mb", "1 megabyte", "-1mb"])
def test_parse_size_refuses_junk(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_the_proxy_variables_are_read_from_the_environment_as_tools_spell_them(
    tmp_path, monkeypatch
):
    env = tmp_path / ".env"
    env.write_text("")
    monkeypatch.setenv("https_proxy", "http://gw.internal:3128")  # curl's spelling
    monkeypatch.setenv("NO_PROXY", "localhost,.lan")
    s = load_settings(str(env))
    assert (s.https_proxy, s.no_proxy, s.http_proxy) == (
        "http://gw.internal:3128",
        "localhost,.lan",
        "",
    )


def test_tls_at_a_load_balancer_needs_its_addresses(tmp_path, monkeypatch):
    for name in ("TLS_TERMINATION", "TRUSTED_PROXIES"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text("TLS_TERMINATION=load-balancer\nTRUSTED_PROXIES=10.1.2.3/8, fd00::/8\n")
    s = load_settings(str(env))
    assert s.tls_termination == "load-balancer"
    assert s.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    env.write_text("TLS_TERMINATION=load-balancer\n")
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES"):
        load_settings(str(env))
    for bad in ("10.0.0.0/8;x", "example.com", "10.0.0.0/33"):
        env.write_text(f"TLS_TERMINATION=load-balancer\nTRUSTED_PROXIES={bad}\n")
        with pytest.raises(ValidationError, match="Invalid CIDR"):
            load_settings(str(env))
    env.write_text("TLS_TERMINATION=ingress\n")
    with pytest.raises(ValidationError):
        load_settings(str(env))


def test_the_proxy_protocol_needs_its_balancers_and_excludes_an_http_one(tmp_path, monkeypatch):
    for name in ("TLS_TERMINATION", "TRUSTED_PROXIES", "PROXY_PROTOCOL_PORT"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text("PROXY_PROTOCOL_PORT=8443\nTRUSTED_PROXIES=172.16.0.0/12\n")
    assert load_settings(str(env)).proxy_protocol_port == 8443
    for text, why in (
        ("PROXY_PROTOCOL_PORT=8443\n", "TRUSTED_PROXIES"),
        ("TRUSTED_PROXIES=10.0.0.0/8\n", "TRUSTED_PROXIES is for"),
        (
            "TLS_TERMINATION=load-balancer\nTRUSTED_PROXIES=10.0.0.0/8\nPROXY_PROTOCOL_PORT=1\n",
            "one or the other",
        ),
    ):
        env.write_text(text)
        with pytest.raises(ValidationError, match=why):
            load_settings(str(env))
