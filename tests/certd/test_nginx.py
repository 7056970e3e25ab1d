"""nginx configuration: rendered, checked by the real `nginx -t`, and applied to a running nginx."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.certd import nginx
from services.certd.nginx_conf import main_conf_path, render_server, server_conf_path
from tests.conftest import eventually, free_port, make_settings


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "service": self.server.name,
                "path": self.path,  # type: ignore[attr-defined]
                "xff": self.headers.get("X-Forwarded-For"),
                "real_ip": self.headers.get("X-Real-IP"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(name: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Echo)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def running_nginx(tmp_path) -> Iterator[tuple]:
    api, proxy = serve("api"), serve("proxy")
    settings = make_settings(
        tmp_path, port=free_port(), api_port=api.server_port, proxy_port=proxy.server_port
    )
    applied = nginx.apply(settings)
    assert applied.changed and not applied.reloaded
    process = subprocess.Popen(
        [
            settings.nginx_bin,
            "-c",
            str(main_conf_path(settings)),
            "-p",
            f"{settings.nginx_prefix.absolute()}/",
        ]
    )
    eventually(lambda: _connects(settings.port))
    yield settings, process
    process.send_signal(signal.SIGQUIT)
    process.wait(10)
    for server in (api, proxy):
        server.shutdown()
        server.server_close()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def get(port: int, path: str, source: str = "127.0.0.1") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    conn.request("GET", path, headers={"X-Forwarded-For": "127.0.0.1"})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, (json.loads(body) if response.status == 200 else {})


def test_routes_v1_to_proxy_and_the_rest_to_api(running_nginx):
    settings, _ = running_nginx
    assert get(settings.port, "/v1/models")[1]["service"] == "proxy"
    assert get(settings.port, "/v1")[1]["service"] == "proxy"
    assert get(settings.port, "/healthz")[1]["service"] == "api"
    assert get(settings.port, "/v1beta/x")[1]["service"] == "api"


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
    settings, _ = running_nginx
    status, body = get(settings.port, path)
    assert status == 200 and body["service"] == "api"
    # 127.0.0.2 stands for a public address once the CIDR groups leave out 127.0.0.0/8.
    restricted = render_server(settings, admin_cidrs=["127.0.0.1/32"])
    nginx.apply(settings, restricted)
    assert eventually(lambda: get(settings.port, path, source="127.0.0.2")[0] == 403)
    assert get(settings.port, "/v1/models", source="127.0.0.2")[0] == 200


def test_services_see_the_real_client_address(running_nginx):
    settings, _ = running_nginx
    body = get(settings.port, "/v1/models", source="127.0.0.3")[1]
    assert body["real_ip"] == "127.0.0.3"
    assert body["xff"] == "127.0.0.1, 127.0.0.3"  # a spoofed header cannot hide the peer


def test_refused_config_keeps_the_last_good_one(running_nginx):
    settings, _ = running_nginx
    before = server_conf_path(settings).read_text()
    with pytest.raises(nginx.NginxError, match="unknown directive"):
        nginx.apply(settings, before + "\nbogus_directive on;\n")
    assert server_conf_path(settings).read_text() == before
    assert get(settings.port, "/v1/models")[0] == 200
    assert not list(settings.nginx_conf_dir.glob(".candidate*"))


def test_apply_is_idempotent(running_nginx):
    settings, _ = running_nginx
    assert nginx.apply(settings) == nginx.Applied(changed=False, reloaded=False)
