"""The api's /nginx routes: validation, desired state written, certd's outcome waited for.

certd itself is played here by a thread that answers in status.json as certd would; the real
one is in tests/stack/test_tls.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from shared.site import CertdStatus, no_outcome, read_site, update_site, write_status
from tests.conftest import make_settings

SECRET = "s" * 40


@pytest.fixture
def api(tmp_path):
    settings = make_settings(tmp_path, jwt_secret=SECRET, certd_wait_seconds=3.0)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = "Bearer " + sessions.for_settings(settings).issue("admin")
        yield client, settings


def certd_answers(settings, generation: int, **changes) -> threading.Thread:
    """Answer `generation` the way certd would, with `changes` to the status."""

    def run() -> None:
        deadline = time.monotonic() + 30  # the api writes the site at once; a loaded machine
        while time.monotonic() < deadline:
            site = read_site(settings.site_file)
            if site.generation >= generation:
                status: CertdStatus = {
                    "appliedGeneration": site.generation,
                    "applied": {**no_outcome(), "handled": site.generation},
                    "nginx": {"ok": True, "error": None, "at": time.time()},
                    "certificates": [],
                    "reload": no_outcome(),
                    "renew": no_outcome(),
                    "defaultConfig": "# default\n",
                }
                write_status(settings.certd_status_file, {**status, **changes})  # type: ignore[typeddict-item]
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_admin_only(api):
    client, _ = api
    assert client.get("/nginx/status", headers={"Authorization": ""}).status_code == 401


def test_status_before_certd_reports(api):
    client, _ = api
    body = client.get("/nginx/status").json()
    assert body == {
        "success": True,
        "generation": 0,
        "appliedGeneration": 0,
        "nginx": {"ok": False, "error": "certd has not reported yet", "at": 0.0},
        "certificates": [],
        "site": {"domains": [], "cidrGroups": [], "acmeEmail": "", "httpMode": "redirect"},
    }
    r = client.get("/nginx/config/get")
    assert r.status_code == 500
    assert r.json()["config"] == "" and r.json()["message"].startswith("ENOENT: ")


def test_without_certd_the_change_is_saved_and_the_answer_says_so(api):
    client, settings = api
    r = client.post(
        "/nginx/config/write-default",
        json={"domain": "LLM.example.com", "cidrGroups": ["10.1.0.0/16"]},
    )
    assert r.status_code == 504
    assert "certd is not running" in r.json()["message"]
    site = read_site(settings.site_file)
    assert (site.generation, site.domains, site.cidr_groups) == (
        1,
        ("llm.example.com",),
        ("10.1.0.0/16",),
    )


def test_answers_follow_certds_outcome(api):
    client, settings = api
    certd_answers(settings, 1)
    r = client.post("/nginx/config/write-default", json={"domain": "a.example", "cidrGroups": []})
    assert r.json() == {"success": True, "message": "Default config written successfully"}
    assert client.get("/nginx/config/get-default").json() == {
        "success": True,
        "config": "# default\n",
    }
    certd_answers(
        settings,
        2,
        certificates=[
            {
                "name": "b.example",
                "domains": ["b.example"],
                "notAfter": None,
                "lastRenewal": None,
                "lastError": "No TXT records found",
            }
        ],
    )
    r = client.post("/nginx/certificates/obtain", json={"domains": ["b.example"]})
    assert r.status_code == 500
    assert r.json() == {
        "success": False,
        "message": "No certificate for b.example: No TXT records found",
    }


def _cert(name: str, issued: bool) -> dict[str, object]:
    return {
        "name": name,
        "domains": [name],
        "notAfter": "2099-01-01T00:00:00+00:00" if issued else None,
        "lastRenewal": None,
        "lastError": None if issued else "No TXT records found",
    }


def test_renew_does_not_claim_a_certificate_never_issued(api):
    client, settings = api
    renewed = {**no_outcome(), "handled": 1}
    certd_answers(settings, 1, renew=renewed, certificates=[_cert("never.example", False)])
    r = client.get("/nginx/certificates/renew")
    assert (r.status_code, r.json()) == (
        409,
        {
            "success": False,
            "message": "Nothing to renew: never.example has never been issued (obtain it first)",
        },
    )
    both = [_cert("good.example", True), _cert("never.example", False)]
    certd_answers(settings, 2, renew={**no_outcome(), "handled": 2}, certificates=both)
    r = client.get("/nginx/certificates/renew")
    assert r.json() == {
        "success": True,
        "message": "Certificates renewed successfully, but for never.example, "
        "never issued (obtain it first).",
    }


def test_a_certificate_never_issued_can_be_removed(api):
    client, settings = api
    update_site(settings.site_file, lambda s: s.with_certificate(["never.example"]))
    update_site(settings.site_file, lambda s: s.with_certificate(["good.example"]))
    certd_answers(
        settings, 2, certificates=[_cert("good.example", True), _cert("never.example", False)]
    )
    r = client.delete("/nginx/certificates/good.example")
    assert r.status_code == 409 and "has been issued" in r.json()["message"]
    certd_answers(settings, 3, certificates=[_cert("good.example", True)])
    r = client.delete("/nginx/certificates/never.example")
    assert r.json() == {"success": True, "message": "Removed never.example."}
    assert [c.name for c in read_site(settings.site_file).certificates] == ["good.example"]
    r = client.delete("/nginx/certificates/never.example")
    assert r.status_code == 404


def test_the_sites_own_certificate_is_not_removed(api):
    client, settings = api
    update_site(
        settings.site_file,
        lambda s: replace(s.with_certificate(["a.example"]), domains=("a.example",)),
    )
    certd_answers(settings, 2, certificates=[_cert("a.example", False)])
    r = client.delete("/nginx/certificates/a.example")
    assert (r.status_code, r.json()["message"]) == (
        409,
        "The site's domain needs a.example; change the domain first",
    )


def test_no_certificate_is_obtained_where_tls_ends_at_a_load_balancer(tmp_path):
    settings = make_settings(
        tmp_path,
        jwt_secret=SECRET,
        tls_termination="load-balancer",
        trusted_proxies="10.0.0.0/8, fd00::/8",
    )
    assert settings.trusted_proxies == ("10.0.0.0/8", "fd00::/8")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = "Bearer " + sessions.for_settings(settings).issue("admin")
        answer = client.post("/nginx/certificates/obtain", json={"domains": ["a.example.test"]})
    assert answer.status_code == 409 and "load balancer" in answer.json()["message"]
    assert read_site(settings.site_file).generation == 0  # nothing asked of certd


def test_with_the_database_away_the_site_routes_say_so(tmp_path):
    settings = make_settings(
        tmp_path, jwt_secret=SECRET, database_url=f"postgresql:///x?host={tmp_path}"
    )
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = "Bearer " + sessions.for_settings(settings).issue("admin")
        status = client.get("/nginx/status")
        change = client.post(
            "/nginx/config/write-default", json={"domain": "a.example.test", "cidrGroups": []}
        )
    for answer in (status, change):
        assert answer.status_code == 500
        assert answer.json()["message"].startswith("The site is unreadable: site database:")
