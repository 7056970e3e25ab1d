"""nginx configuration: rendered, checked by the real `nginx -t`, and applied to a running nginx."""

from __future__ import annotations

import functools
import json
import os
import pwd
import socket
import ssl

import pytest

from services.certd import nginx
from services.certd.nginx_conf import main_conf_path, render_server, server_conf_path
from services.certd.reconcile import Certd
from shared.site import Site, read_status, write_site
from tests.certd.servers import get, tls_get
from tests.certd.test_nginx_conf import self_signed
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # real nginx servers


@pytest.fixture
def running_nginx(echo_settings, run_nginx):
    settings = echo_settings()
    applied = nginx.apply(settings)
    assert applied.changed and not applied.reloaded
    run_nginx(settings)
    return settings


def test_routes_v1_to_proxy_slash_to_api_and_nothing_else(running_nginx):
    port = running_nginx.port
    assert get(port, "/v1/models")[1]["service"] == "proxy"
    assert get(port, "/v1")[1]["service"] == "proxy"
    assert get(port, "/healthz")[1]["service"] == "api"
    assert get(port, "/")[1]["text"] == "LLM Proxy"  # nginx's own answer
    for path in ("/v1beta/x", "/static/nginx-server-template.conf", "/keys", "/adminx"):
        assert get(port, path)[0] == 404, path


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/admin/",
        "/Admin/x",
        "/API/keys",
        "/auth/login",
        "/nginx/reload",
        "/metrics",
        "/healthz",
        "//admin",
        "/x/../api/keys",
        "/%61dmin/",
    ],
)
def test_admin_paths_only_from_private_ranges(running_nginx, path):
    settings = running_nginx
    status, body = get(settings.port, path)
    assert status == 200 and body["service"] == "api"
    # 127.0.0.2 stands for a public address once the CIDR groups leave out 127.0.0.0/8.
    restricted = render_server(settings, admin_cidrs=["127.0.0.1/32"])
    nginx.apply(settings, restricted)
    assert eventually(lambda: get(settings.port, path, source="127.0.0.2")[0] == 403)
    assert get(settings.port, "/v1/models", source="127.0.0.2")[0] == 200


@pytest.mark.parametrize("path", ["/admin/..", "/api/keys/../..", "/nginx/%2e%2e", "/?x=1"])
def test_paths_that_normalise_to_the_root_never_reach_the_api(running_nginx, path):
    # nginx matches `location = /` on the normalised path; passed on, the raw one went too.
    settings = running_nginx
    nginx.apply(settings, render_server(settings, admin_cidrs=["127.0.0.1/32"]))
    assert eventually(lambda: get(settings.port, "/admin", source="127.0.0.2")[0] == 403)
    status, answer = get(settings.port, path, source="127.0.0.2")
    assert (status, answer.get("text")) == (200, "LLM Proxy"), answer


def test_an_answer_with_12_kb_of_headers_passes_through_v1(running_nginx):
    status, body = get(running_nginx.port, "/v1/big-headers")
    assert status == 200 and body["service"] == "proxy"


def test_services_see_the_real_client_address(running_nginx):
    body = get(running_nginx.port, "/v1/models", source="127.0.0.3")[1]
    assert body["real_ip"] == "127.0.0.3"
    assert body["xff"] == "127.0.0.3"  # the forged 127.0.0.1 the client sent is dropped


def test_refused_config_keeps_the_last_good_one(running_nginx):
    settings = running_nginx
    before = server_conf_path(settings).read_text()
    with pytest.raises(nginx.NginxError, match="unknown directive"):
        nginx.apply(settings, before + "\nbogus_directive on;\n")
    assert server_conf_path(settings).read_text() == before
    assert get(settings.port, "/v1/models")[0] == 200
    assert not list(settings.nginx_conf_dir.glob(".candidate*"))


def test_failed_reload_rolls_back(running_nginx, monkeypatch):
    settings = running_nginx
    before = server_conf_path(settings).read_text()

    def refuse(settings):
        raise nginx.NginxError("reload refused")

    monkeypatch.setattr(nginx, "reload", refuse)
    with pytest.raises(nginx.NginxError, match="reload refused"):
        nginx.apply(settings, render_server(settings, admin_cidrs=["10.0.0.0/8"]))
    assert server_conf_path(settings).read_text() == before


def test_apply_is_idempotent(running_nginx):
    assert nginx.apply(running_nginx) == nginx.Applied(changed=False, reloaded=False)


def test_start_up_falls_back_when_the_desired_config_is_refused(echo_settings):
    settings = echo_settings()
    settings.site_file.parent.mkdir(parents=True)
    settings.site_file.write_text('{"generation": 1, "customConfig": "bogus_directive on;"}')
    assert nginx.apply(settings).changed
    assert "location ^~ /v1/" in server_conf_path(settings).read_text()


def _engine_server(settings, engine) -> str:
    """A TLS server whose key is "in" the engine library: nginx -t makes OpenSSL load it."""
    self_signed(settings.certbot_dirs[0], "e.example", ["e.example"])
    live = settings.certbot_dirs[0] / "live" / "e.example"
    return (
        f"server {{\n    listen 127.0.0.1:{settings.https_port} ssl;\n"
        f'    ssl_certificate "{live}/fullchain.pem";\n'
        f'    ssl_certificate_key "engine:{engine.library}:x";\n}}\n'
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="certd changes user only when it runs as root")
def test_nginx_t_runs_as_an_unprivileged_user_that_cannot_read_secrets(echo_settings, engine):
    # As if a configuration got past the allowlist: what nginx -t loads runs as NGINX_TEST_USER,
    # which can read neither llmp's secrets nor the live configuration.
    settings = echo_settings()
    with pytest.raises(nginx.NginxError, match="ENGINE") as refused:
        nginx.test(settings, _engine_server(settings, engine))
    nobody = pwd.getpwnam(settings.nginx_test_user).pw_uid
    assert engine.loaded_by() == f"uid={nobody} secret=refused write=refused"
    # nginx's message names the files as the admin knows them, not their private copies.
    assert "llmp-nginx-test" not in str(refused.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="certd changes user only when it runs as root")
def test_nginx_t_as_the_unprivileged_user_still_checks_certificates(echo_settings):
    settings = echo_settings()
    self_signed(settings.certbot_dirs[0], "c.example", ["c.example"])
    live = settings.certbot_dirs[0] / "live" / "c.example"
    server = (
        f"server {{ listen 127.0.0.1:{settings.https_port} ssl;\n"
        f'  ssl_certificate "{live}/fullchain.pem"; ssl_certificate_key "{live}/privkey.pem"; }}\n'
    )
    nginx.test(settings, server)  # passes: the certificate and its key are read and match
    other = server.replace("c.example/privkey.pem", "d.example/privkey.pem")
    self_signed(settings.certbot_dirs[0], "d.example", ["d.example"])
    with pytest.raises(nginx.NginxError, match="key values mismatch") as refused:
        nginx.test(settings, other)
    assert str(live.parent / "d.example" / "privkey.pem") in str(refused.value)


def test_a_saved_custom_config_is_checked_before_nginx_sees_it(echo_settings, engine):
    # Saved by an older llmp (or written to site.json by hand): certd refuses it unseen by nginx.
    settings = echo_settings()
    custom = _engine_server(settings, engine)
    settings.site_file.parent.mkdir(parents=True, exist_ok=True)
    settings.site_file.write_text(json.dumps({"generation": 1, "customConfig": custom}))
    certd = Certd(settings)
    certd.step()
    assert engine.loaded_by() is None
    status = read_status(settings.certd_status_file)
    assert status["nginx"]["ok"] is False
    assert '"ssl_certificate_key" takes the absolute path of a file' in status["nginx"]["error"]
    # At start-up too, nginx falls back to llmp's own routes without testing it.
    nginx.apply(settings)
    assert engine.loaded_by() is None
    assert "location ^~ /v1/" in server_conf_path(settings).read_text()


def test_main_configuration_roots_every_server_in_an_empty_folder(running_nginx):
    settings = running_nginx
    main = main_conf_path(settings).read_text()
    empty = settings.nginx_prefix.absolute() / "empty"
    assert f"root {empty};" in main
    assert empty.is_dir() and not list(empty.iterdir())


def _raw_get(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(65536)


@pytest.mark.parametrize("http_mode", ["redirect", "serve"])
def test_only_the_sites_names_and_addresses_are_served_once_it_has_names(
    echo_settings, run_nginx, http_mode
):
    settings = echo_settings()
    self_signed(settings.certbot_dirs[0], "a.example", ["a.example", "*.a.example"])
    write_site(settings.site_file, Site(domains=("a.example",), http_mode=http_mode))
    run_nginx(settings)
    port, https = settings.port, settings.https_port
    # Another name is not ours to answer, on either port: no redirect built from it.
    for host in ("evil.example", "a.example.evil.example", "a.example@evil.example"):
        assert get(port, "/v1/models", host=host)[0] in (400, 421), host
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    assert tls_get(https, "/v1/models", context, "evil.example")[0] == 421
    assert tls_get(https, "/v1/models", context, "a.example")[1]["service"] == "proxy"
    assert tls_get(https, "/v1/models", context, "127.0.0.1")[1]["service"] == "proxy"
    if http_mode == "serve":
        for host in ("a.example", "x.a.example", f"127.0.0.1:{port}", "localhost", "[::1]"):
            assert get(port, "/v1/models", host=host)[1]["service"] == "proxy", host
        return
    # The site's names go to HTTPS under the name asked for; an address, to the site's name.
    redirects = {
        "a.example": f"https://a.example:{https}/v1/models",
        "x.a.example": f"https://x.a.example:{https}/v1/models",
        f"127.0.0.1:{port}": f"https://a.example:{https}/v1/models",
        "localhost": f"https://a.example:{https}/v1/models",
        "[::1]": f"https://a.example:{https}/v1/models",
    }
    for host, location in redirects.items():
        status, answer = get(port, "/v1/models", host=host)
        assert (status, answer["location"]) == (308, location), host
    no_host = _raw_get(port, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 308") and b"https://a.example:" in no_host


SLOTS = 32  # connections per nginx worker, lowered from the machine's size to keep this cheap
PER_ADDRESS = 8


def _half_sent(port: int) -> socket.socket | None:
    """A request whose headers say a body follows, and whose body never comes."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /v1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\nabc")
        return sock
    except OSError:
        return None  # nginx had no slot left: it closed the connection at once


def _answered(sock: socket.socket) -> bytes | None:
    """What nginx said (b"" if it closed the connection); None if it is still waiting."""
    sock.settimeout(0.5)
    try:
        return sock.recv(100)
    except TimeoutError:
        return None
    except OSError:
        return b""


def _status(port: int, source: str) -> int | str:
    try:
        return get(port, "/v1/models", source=source)[0]
    except OSError as exc:  # no slot left: closed without an answer
        return repr(exc)


def _served(port: int, source: str) -> bool:
    return _status(port, source) == 200


def test_one_address_with_more_half_sent_requests_than_slots_does_not_starve_others(
    echo_settings, run_nginx
):
    settings = echo_settings(
        nginx_worker_connections=SLOTS, nginx_connections_per_address=PER_ADDRESS
    )
    run_nginx(settings)
    workers = len(nginx._workers(nginx._master(settings) or 0)) or 1
    attack = [_half_sent(settings.port) for _ in range(3 * SLOTS * workers)]
    opened = [sock for sock in attack if sock is not None]
    try:
        answers = [_answered(sock) for sock in opened]
        # The address's requests past its cap are refused at once (the rest found no slot);
        # only PER_ADDRESS of them wait for their body.
        waiting = answers.count(None)
        refused = sum(1 for a in answers if a and a.startswith(b"HTTP/1.1 429"))
        assert waiting <= PER_ADDRESS and refused > 0, (waiting, refused, len(opened))
        # Other addresses are served, as soon as the refused connections are closed (the
        # attack here opens no new ones).
        for source in (f"127.0.0.{n}" for n in range(2, 12)):
            eventually(functools.partial(_served, settings.port, source), 15)
    finally:
        for sock in opened:
            sock.close()


def test_behind_a_load_balancer_only_its_forwarded_headers_are_believed(echo_settings, run_nginx):
    """TLS_TERMINATION=load-balancer: from TRUSTED_PROXIES (127.0.0.1 here), the client's address
    and scheme are what the load balancer says; from anyone else, what nginx sees."""
    settings = echo_settings(tls_termination="load-balancer", trusted_proxies="127.0.0.1/32")
    write_site(
        settings.site_file,
        Site(generation=1, domains=("app.example.test",), cidr_groups=("203.0.113.0/24",)),
    )
    nginx.apply(settings)
    run_nginx(settings)
    via_lb = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9", "X-Forwarded-Proto": "https"}
    code, body = get(settings.port, "/v1/models", host="app.example.test", headers=via_lb)
    assert code == 200  # served over plain HTTP: no redirect, there is no TLS here
    assert (body["real_ip"], body["xff"], body["proto"]) == ("203.0.113.9", "203.0.113.9", "https")
    # The admin paths judge the client's address, not the load balancer's.
    assert get(settings.port, "/nginx/status", host="app.example.test", headers=via_lb)[0] == 200
    outsider = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    assert get(settings.port, "/nginx/status", host="app.example.test", headers=outsider)[0] == 403
    # Only http and https are taken for a scheme.
    odd = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "gopher"}
    assert get(settings.port, "/v1/models", host="app.example.test", headers=odd)[1]["proto"] == (
        "http"
    )
    # Anyone else saying the same is not believed.
    code, body = get(
        settings.port, "/v1/models", source="127.0.0.2", host="app.example.test", headers=via_lb
    )
    assert (body["real_ip"], body["proto"]) == ("127.0.0.2", "http")
    assert (
        get(
            settings.port,
            "/nginx/status",
            source="127.0.0.2",
            host="app.example.test",
            headers=via_lb,
        )[0]
        == 403
    )
    # And certd obtains nothing: no certbot run, nothing listens for TLS.
    certd = Certd(settings)
    certd.step()
    status = read_status(settings.certd_status_file)
    assert status["applied"]["ok"] and status["certificates"] == []
    assert not settings.certbot_dirs[2].exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", settings.https_port), timeout=1).close()


def test_without_a_load_balancer_forwarded_headers_are_nginxs_own(running_nginx):
    claims = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    body = get(running_nginx.port, "/v1/models", headers=claims)[1]
    assert (body["real_ip"], body["xff"], body["proto"]) == ("127.0.0.1", "127.0.0.1", "http")


def _via_proxy_protocol(port: int, client: str, source: str = "127.0.0.1") -> dict:
    """A GET on a PROXY protocol port, the PROXY line naming `client`, sent from `source`."""
    with socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0)) as sock:
        sock.sendall(
            f"PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n".encode()
            + b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
            + b"X-Forwarded-For: 192.0.2.1\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def test_behind_a_tcp_load_balancer_the_proxy_protocol_names_the_client(echo_settings, run_nginx):
    from tests.conftest import free_port

    settings = echo_settings(proxy_protocol_port=free_port(), trusted_proxies="127.0.0.1/32")
    run_nginx(settings)
    body = _via_proxy_protocol(settings.proxy_protocol_port, "203.0.113.9")
    # The client's own headers are not believed: only the balancer's PROXY line.
    assert (body["real_ip"], body["xff"], body["proto"]) == ("203.0.113.9", "203.0.113.9", "http")
    # From an address that is not a trusted proxy, the PROXY line is not believed either.
    body = _via_proxy_protocol(settings.proxy_protocol_port, "203.0.113.9", source="127.0.0.2")
    assert body["real_ip"] == "127.0.0.2"
    # PORT still serves without it (health checks inside the machine).
    assert get(settings.port, "/v1/models")[1]["real_ip"] == "127.0.0.1"
