"""The api's /nginx routes: validation, desired state written, certd's outcome waited for.

certd itself is played here by a thread that answers in status.json as certd would; the real
one is in tests/stack/test_tls.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from services.api import sessions
from services.api.app import create_app
from shared.site import CertdStatus, no_outcome, read_site, write_status
from tests.conftest import make_settings

SECRET = "s" * 40


@pytest.fixture
def api(tmp_path):
    settings = make_settings(tmp_path, jwt_secret=SECRET, certd_wait_seconds=3.0)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = "Bearer " + sessions.issue(SECRET, "admin")
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
                "lastError": "Command failed: certbot ...\nNo TXT records found",
            }
        ],
    )
    r = client.post("/nginx/certificates/obtain", json={"domains": ["b.example"]})
    assert r.status_code == 500
    assert r.json() == {
        "success": False,
        "message": "Command failed: certbot ...\nNo TXT records found",
    }
