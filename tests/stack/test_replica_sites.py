"""Two whole stacks sharing one PostgreSQL (DATABASE_URL) and one pebble: the site changed
through either replica's admin API is applied by both certds, one of them alone runs certbot,
both nginx serve the certificate, and the admin sees the same status from each."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from services.certd import certs
from tests.certd.acme import AcmeServer
from tests.certd.servers import tls_get
from tests.conftest import eventually, free_port
from tests.stack.conftest import ADMIN, Stack
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.slow

HOST = "app.example.test"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, postgres) -> Iterator[tuple[AcmeServer, list[Stack]]]:
    acme = AcmeServer(tmp_path_factory.mktemp("acme-replicas")).start()
    upstream = FakeUpstream("a", ["model-a"]).start()
    database_url = postgres.new_database()
    stacks: list[Stack] = []
    try:
        for name in ("one", "two"):
            env = {
                **acme.env(),
                "HTTPS_PORT": str(free_port()),
                "CERTD_WAIT_SECONDS": "90",
                "DATABASE_URL": database_url,
                "REPLICA_NAME": name,
            }
            stacks.append(Stack(tmp_path_factory.mktemp(name), [upstream], env=env).start())
        yield acme, stacks
    finally:
        codes = [stack.stop() for stack in stacks]
        upstream.stop()
        acme.stop()
        assert codes == [0] * len(stacks), [s.output() for s in stacks]


def status(stack: Stack) -> dict:
    """GET /nginx/status from the replica's api itself (nginx redirects HTTP to HTTPS now)."""
    api = f"http://127.0.0.1:{stack.env['API_PORT']}"
    with httpx.Client(base_url=api, timeout=30) as client:
        r = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        assert r.status_code == 200, r.text
        r = client.get("/nginx/status")
    assert r.status_code == 200, r.text
    body: dict = r.json()
    return body


def test_a_site_changed_through_one_replica_is_served_by_both(replicas):
    acme, (one, two) = replicas
    with one.admin() as admin:
        r = admin.post("/nginx/certificates/obtain", json={"domains": [HOST]})
    assert r.status_code == 200, r.text
    # certbot ran on one replica only (the leader's logs and work folders; none on the other).
    ran = [s for s in (one, two) if (s.home / "certs" / "logs").exists()]
    assert len(ran) == 1, "certbot ran on both replicas"
    context = acme.ssl_context()
    serials = []
    for stack in (one, two):
        https_port = int(stack.env["HTTPS_PORT"])

        def served(port: int = https_port) -> int | None:
            try:
                return certs.served_serial(tls_get(port, "/v1/models", context, HOST)[2])
            except OSError:
                return None

        serials.append(eventually(served, timeout=60))
    assert serials[0] == serials[1]
    # The same view from either replica, once both report the certificate served.
    eventually(lambda: all(c["notAfter"] for c in status(one)["certificates"]), timeout=30)
    view_one, view_two = status(one), status(two)
    assert view_one == view_two
    assert view_one["generation"] == view_one["appliedGeneration"] and view_one["nginx"]["ok"]

    # A change through the other replica reaches the first one's nginx: admin paths from the
    # CIDR group only (127.0.0.2 is a loopback address, allowed until CIDR groups are set).
    def from_outside(source: str = "127.0.0.2") -> int:
        with httpx.Client(
            transport=httpx.HTTPTransport(local_address=source), timeout=10
        ) as client:
            return client.get(one.url + "/nginx/status", headers={"Host": HOST}).status_code

    assert from_outside() == 308  # to HTTPS: not refused
    api = f"http://127.0.0.1:{two.env['API_PORT']}"
    with httpx.Client(base_url=api, timeout=120) as admin:
        r = admin.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
        r = admin.post(
            "/nginx/config/write-default",
            json={"domain": HOST, "cidrGroups": ["127.0.0.1/32"], "httpMode": "serve"},
        )
    assert r.status_code == 200, r.text
    assert from_outside() == 403  # refused by replica one's nginx
    assert from_outside("127.0.0.1") == 401  # served to the CIDR group (the api wants a login)
