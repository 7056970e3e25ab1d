"""nginx configuration: rendered, checked by the real `nginx -t`, and applied to a running nginx."""

from __future__ import annotations

import pytest

from services.certd import nginx
from services.certd.nginx_conf import render_server, server_conf_path
from tests.certd.servers import get
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
    assert get(port, "/")[1]["service"] == "api"
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
