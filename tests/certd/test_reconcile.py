"""certd's reconcile against the real thing: certbot and its Cloudflare plugin, pebble, nginx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.certd import certs
from services.certd.nginx_conf import server_conf_path
from services.certd.reconcile import Certd
from shared.site import Site, read_status, update_site, write_site
from tests.certd.servers import get, tls_get
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # pebble, certbot and nginx

HOST = "app.example.test"


@pytest.fixture
def world(acme, echo_settings, run_nginx):
    settings = echo_settings(**acme.settings())
    run_nginx(settings)
    return settings


def test_obtains_serves_and_restricts(world, acme):
    settings = world
    site = update_site(
        settings.site_file,
        lambda s: replace(
            s.with_certificate([HOST, "*.example.test"]), cidr_groups=("127.0.0.1/32",)
        ),
    )
    certd = Certd(settings)
    t0 = time.monotonic()
    certd.step()
    issued = time.monotonic() - t0
    status = read_status(settings.certd_status_file)
    assert status["appliedGeneration"] == site.generation and status["applied"]["ok"], status
    [cert] = status["certificates"]
    assert cert["domains"] == [HOST, "*.example.test"] and cert["lastError"] is None
    assert cert["notAfter"].endswith("Z") and cert["lastRenewal"] is None

    # The certbot plugin really went through the (fake) Cloudflare API, and cleaned up.
    cloudflare = acme.cloudflare_state()
    assert cloudflare["records"] == []
    assert sum(e["method"] == "POST" for e in cloudflare["log"]) >= 2

    # nginx serves it, for the wildcard too, with the same routes as on HTTP.
    context = acme.ssl_context()
    lineage = certs.load(settings.certbot_dirs[0], HOST)
    for host in (HOST, "other.example.test"):
        status_code, body, der = tls_get(settings.https_port, "/v1/models", context, host)
        assert (status_code, body["service"], body["proto"]) == (200, "proxy", "https")
        assert certs.served_serial(der) == lineage.serial
    # Admin paths from the allowed address only, in any spelling; /v1 from anywhere.
    for path in ("/admin", "/Admin", "/admin/", "/API/keys", "/nginx/status"):
        assert tls_get(settings.https_port, path, context, HOST)[0] == 200
        assert tls_get(settings.https_port, path, context, HOST, source="127.0.0.2")[0] == 403
    assert tls_get(settings.https_port, "/v1/x", context, HOST, source="127.0.0.2")[0] == 200
    assert tls_get(settings.https_port, "/nope", context, HOST)[0] == 404
    # Plain HTTP now redirects, except health checks: to the name asked for, or from an
    # address to the site's name.
    status_code, body = get(settings.port, "/v1/models?x=1")
    assert status_code == 308
    assert body["location"] == f"https://{HOST}:{settings.https_port}/v1/models?x=1"
    body = get(settings.port, "/v1/models?x=1", host="a.example.test")[1]
    assert body["location"] == f"https://a.example.test:{settings.https_port}/v1/models?x=1"
    assert get(settings.port, "/healthz")[0] == 200

    # Serving plain HTTP instead is the admin's choice.
    update_site(settings.site_file, lambda s: replace(s, http_mode="serve"))
    certd.step()
    assert get(settings.port, "/v1/models")[1]["service"] == "proxy"
    print(f"\nissuance through certd (certbot + pebble + nginx reload): {issued:.2f}s")


def test_refused_custom_config_keeps_the_previous_one(world, acme):
    settings = world
    certd = Certd(settings)
    certd.step()
    good = server_conf_path(settings).read_text()
    # Allowed, but not valid nginx: nginx -t says so.
    broken = good + "client_max_body_size 1x;\n"
    update_site(settings.site_file, lambda s: replace(s, custom_config=broken))
    certd.step()
    status = read_status(settings.certd_status_file)
    assert status["nginx"]["ok"] is False
    assert '"client_max_body_size" directive invalid value' in status["nginx"]["error"]
    assert status["applied"]["ok"] is False
    assert "client_max_body_size" in status["applied"]["message"]
    assert server_conf_path(settings).read_text() == good
    assert get(settings.port, "/v1/models")[0] == 200
    # A good custom config is served as written.
    custom = good.replace("return 404;", "return 410;")
    update_site(settings.site_file, lambda s: replace(s, custom_config=custom))
    certd.step()
    assert read_status(settings.certd_status_file)["nginx"]["ok"] is True
    assert get(settings.port, "/nope")[0] == 410


def test_failed_issuance_is_reported_and_retried_later(world, acme):
    settings = world
    update_site(settings.site_file, lambda s: s.with_certificate(["x.other.test"]))
    certd = Certd(settings)
    certd.step()
    status = read_status(settings.certd_status_file)
    [cert] = status["certificates"]
    assert "Unable to determine zone_id for x.other.test" in cert["lastError"]
    assert "Command failed" not in cert["lastError"]  # certbot's command line is in the log only
    assert cert["notAfter"] is None
    assert status["applied"]["ok"] is True  # the config was applied; the certificate failed
    # Not again at once; again once RENEW_RETRY_SECONDS have passed.
    assert certd.next_check - time.time() > 1
    certd.attempts["x.other.test"] -= settings.renew_retry_seconds
    certd.next_check = 0
    before = len(acme.cloudflare_state()["log"])
    certd.step()
    assert len(acme.cloudflare_state()["log"]) > before


def test_killed_during_issuance_recovers_on_restart(world, acme, tmp_path):
    settings = world
    env_file = tmp_path / "certd.env"
    env_file.write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in {
                **acme.env(),
                "DNS_PROPAGATION_SECONDS": "2",  # a window to kill certbot in
                "DATA_DIR": settings.data_dir,
                "STATE_DIR": settings.state_dir,
                "NGINX_CONF_DIR": settings.nginx_conf_dir,
                "LETSENCRYPT_DIR": settings.letsencrypt_dir,
                "PORT": settings.port,
                "HTTPS_PORT": settings.https_port,
                "BIND_ADDRESS": "127.0.0.1",
                "API_PORT": settings.api_port,
                "PROXY_PORT": settings.proxy_port,
            }.items()
        )
    )
    env = {**os.environ, "ENV_FILE": str(env_file)}
    env.pop("CERTBOT_ENV", None)
    write_site(settings.site_file, Site(generation=1).with_certificate(["kill.example.test"]))

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "certd.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "services.certd"],
                env=env,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def txt_published() -> bool:
        return any(
            e["method"] == "POST" and "kill.example.test" in json.dumps(e["body"])
            for e in acme.cloudflare_state()["log"]
        )

    first = start()
    eventually(txt_published, timeout=30)
    os.killpg(first.pid, signal.SIGKILL)  # certd and its certbot, as supervisord would
    first.wait()
    assert certs.load(settings.certbot_dirs[0], "kill.example.test") is None
    second = start()
    try:
        status = eventually(
            lambda: (
                (s := read_status(settings.certd_status_file)) and s["appliedGeneration"] == 1 and s
            ),
            timeout=60,
        )
        assert status["applied"]["ok"], (tmp_path / "certd.log").read_text()
        assert certs.load(settings.certbot_dirs[0], "kill.example.test") is not None
        der = tls_get(settings.https_port, "/v1/x", acme.ssl_context(), "kill.example.test")[2]
        assert (
            certs.served_serial(der)
            == certs.load(settings.certbot_dirs[0], "kill.example.test").serial
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0


def test_invalid_site_file_keeps_the_last_good_config(world):
    settings = world
    update_site(settings.site_file, lambda s: replace(s, cidr_groups=("10.9.0.0/16",)))
    Certd(settings).step()
    good = server_conf_path(settings).read_text()
    assert "allow 10.9.0.0/16;" in good
    settings.site_file.write_text('{"cidrGroups": ["10.9.0.0/16; allow all"]}')
    for certd in (Certd(settings), Certd(settings)):  # running, and restarted
        certd.step()
        assert "Invalid CIDR group" in certd.heartbeat_state()["last_error"]
        assert server_conf_path(settings).read_text() == good


def test_renewal_checks_follow_the_certificates(world, monkeypatch):
    settings = world
    certd = Certd(settings)
    now = time.time()
    assert certd.next_renewal_check(failed=False) - now == pytest.approx(12 * 3600, abs=5)
    assert certd.next_renewal_check(failed=True) - now == pytest.approx(12 * 3600, abs=5)

    class Due:
        def __init__(self, at: float) -> None:
            self.at = at

        def renewal_time(self):
            return datetime.fromtimestamp(self.at, UTC)

    monkeypatch.setattr(certs, "lineages", lambda _: {"a": Due(now + 100)})
    assert certd.next_renewal_check(failed=False) - now == pytest.approx(101, abs=2)
    monkeypatch.setattr(certs, "lineages", lambda _: {"a": Due(now - 100)})  # certbot disagreed
    assert certd.next_renewal_check(failed=False) - now == pytest.approx(2, abs=1)  # retry
