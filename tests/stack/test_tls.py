"""Certificates and nginx through the admin API, end to end: the whole stack under supervisord,
real certbot (Cloudflare DNS-01 plugin) against pebble, real nginx; only Cloudflare is fake.

pebble here issues certificates valid for VALIDITY seconds, so certd renews them on its own
(at half their lifetime, certbot's rule) while the tests run. The other half is the time a
renewal may take before the served certificate expires: certbot, pebble and nginx on a loaded
machine took more than the 8 s a 16 s certificate left them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from cryptography import x509

from shared.apikeys import ApiKey
from tests.certd.acme import AcmeServer
from tests.certd.servers import tls_get
from tests.conftest import eventually, free_port
from tests.stack.conftest import ADMIN, Stack
from tests.upstream import FakeUpstream

HOST = "app.example.test"
VALIDITY = 50


class Tls:
    def __init__(self, stack: Stack, acme: AcmeServer, https_port: int, long: FakeUpstream) -> None:
        self.stack, self.acme, self.https_port = stack, acme, https_port
        self.long = long  # streams its first chunk, then the rest when released
        self.url = f"https://{HOST}:{https_port}"

    @contextlib.contextmanager
    def admin(self) -> Iterator[httpx.Client]:
        """A client logged in as the admin, over TLS."""
        with httpx.Client(base_url=self.url, timeout=60, verify=self.acme.ssl_context()) as client:
            r = client.post("/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]})
            assert r.status_code == 200, r.text
            yield client

    def openai(self, key: ApiKey, source: str = "127.0.0.1") -> openai.OpenAI:
        transport = httpx.HTTPTransport(local_address=source, verify=self.acme.ssl_context())
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=key.key,
            max_retries=0,
            # openai's stubs name its httpx "httpx2" here; the same client class at run time
            http_client=httpx.Client(  # type: ignore[arg-type]
                transport=transport, timeout=VALIDITY * 2
            ),
        )

    def served(self) -> x509.Certificate:
        der = tls_get(self.https_port, "/v1/models", self.acme.ssl_context(), HOST)[2]
        return x509.load_der_x509_certificate(der)


@pytest.fixture(scope="module")
def resolve_test_domains() -> Iterator[None]:
    """`*.example.test` resolves to 127.0.0.1 in this process (clients use real URLs)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".example.test"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, resolve_test_domains) -> Iterator[Tls]:
    acme = AcmeServer(tmp_path_factory.mktemp("acme-short"), validity=VALIDITY).start()
    upstreams = [
        FakeUpstream("a", ["model-a"]).start(),
        FakeUpstream("long", ["long-model"], chunks=40, held=True).start(),
    ]
    https_port = free_port()
    env = {**acme.env(), "HTTPS_PORT": str(https_port), "CERTD_WAIT_SECONDS": "60"}
    stack = Stack(tmp_path_factory.mktemp("tls"), upstreams, env=env).start()
    try:
        yield Tls(stack, acme, https_port, upstreams[1])
    finally:
        code = stack.stop()
        for upstream in upstreams:
            upstream.stop()
        acme.stop()
        assert code == 0, stack.output()


@pytest.fixture(scope="module")
def issued(world: Tls) -> Tls:
    """A certificate for HOST and *.example.test, obtained through the API over plain HTTP."""
    with world.stack.admin() as admin:
        t0 = time.monotonic()
        r = admin.post("/nginx/certificates/obtain", json={"domains": [HOST, "*.example.test"]})
        print(f"\nPOST /nginx/certificates/obtain answered in {time.monotonic() - t0:.2f}s")
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "message": "Certificates obtained successfully."}
    return world


@pytest.fixture(scope="module")
def api_key(world: Tls) -> ApiKey:
    key = ApiKey.new("tls")
    world.stack.keys(key)
    return key


def test_bad_domains_and_cidr_groups_are_400s(world):
    site = world.stack.data / "site.json"
    with world.stack.admin() as admin:
        for path, body in [
            ("/nginx/certificates/obtain", {"domains": ["x.com; evil"]}),
            ("/nginx/certificates/obtain", {"domains": ["ok.example.test", "a b.example.test"]}),
            ("/nginx/certificates/obtain", {"domains": ["x.com\n}"]}),
            ("/nginx/certificates/obtain", {"domains": "x.com"}),
            ("/nginx/certificates/obtain", {"domains": []}),
            ("/nginx/config/write-default", {"domain": "x.com; evil", "cidrGroups": []}),
            ("/nginx/config/write-default", {"domain": HOST, "cidrGroups": ["1.2.3.4/33"]}),
            ("/nginx/config/write-default", {"domain": HOST, "cidrGroups": ["1.2.3.4; allow all"]}),
            ("/nginx/config/write-default", {"domain": HOST}),
            ("/nginx/config/update", {}),
            ("/nginx/config/update", {"config": 42}),
        ]:
            r = admin.post(path, json=body)
            assert r.status_code == 400, (path, body, r.text)
            assert r.json()["success"] is False
        assert not site.exists()  # nothing was written
        assert (
            admin.post("/nginx/certificates/obtain", json={"domains": ["x.com; evil"]}).json()[
                "message"
            ]
            == "Invalid domain: 'x.com; evil'"
        )
        status = admin.get("/nginx/status").json()
    assert status["success"] is True and status["certificates"] == []
    assert status["nginx"]["ok"] is True


def test_certificate_through_the_api_serves_v1_over_tls(issued, api_key):
    cert = issued.served()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {HOST, "*.example.test"}
    with issued.openai(api_key) as client:
        chat = client.chat.completions.create(model="model-a", messages=[])
        assert chat.choices[0].message.content == "hello from a"
        stream = client.chat.completions.create(model="model-a", messages=[], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "a0 a1 a2 a3 a4 "
    # Plain HTTP now redirects to HTTPS, keeping the method.
    r = httpx.post(issued.stack.url + "/v1/chat/completions?x=1", headers={"Host": HOST})
    assert r.status_code == 308
    assert r.headers["location"] == f"{issued.url}/v1/chat/completions?x=1"
    with issued.admin() as admin:
        status = admin.get("/nginx/status").json()
    [state] = status["certificates"]
    assert state["name"] == HOST and state["lastError"] is None
    assert datetime.fromisoformat(state["notAfter"]) > datetime.now(UTC)
    assert status["appliedGeneration"] == status["generation"]


def test_admin_paths_answer_only_from_the_cidr_groups(issued, api_key):
    with issued.admin() as admin:
        r = admin.post(
            "/nginx/config/write-default", json={"domain": HOST, "cidrGroups": ["127.0.0.1/32"]}
        )
        assert r.json() == {"success": True, "message": "Default config written successfully"}
        assert admin.get("/nginx/status").json()["site"]["cidrGroups"] == ["127.0.0.1/32"]
    context = issued.acme.ssl_context()
    port = issued.https_port
    for path in ("/admin", "/Admin", "/admin/", "/api/keys", "/auth/login", "/nginx/status"):
        assert tls_get(port, path, context, HOST, source="127.0.0.2")[0] == 403, path
        assert tls_get(port, path, context, HOST)[0] != 403, path
    assert tls_get(port, "/v1/models", context, HOST, source="127.0.0.2")[0] == 401  # the proxy's
    with issued.openai(api_key, source="127.0.0.2") as remote:
        assert [m.id for m in remote.models.list()] == ["model-a", "long-model"]


def test_broken_custom_config_is_refused_and_the_old_one_keeps_serving(issued):
    with issued.admin() as admin:
        before = admin.get("/nginx/config/get").json()["config"]
        r = admin.post("/nginx/config/update", json={"config": before + "\nbogus_directive on;\n"})
        assert r.status_code == 400
        assert '"bogus_directive" is not allowed here' in r.json()["message"]
        # Allowed, but not valid nginx: nginx -t says so.
        broken = before + "\nclient_max_body_size 1x;\n"
        r = admin.post("/nginx/config/update", json={"config": broken})
        assert r.status_code == 400
        assert '"client_max_body_size" directive invalid value' in r.json()["message"]
        assert admin.get("/nginx/config/get").json() == {"success": True, "config": before}
        status = admin.get("/nginx/status").json()
        assert status["nginx"]["ok"] is True  # serving the previous config, and desired again
        assert tls_get(issued.https_port, "/v1/models", issued.acme.ssl_context(), HOST)[0] == 401
        r = admin.get("/nginx/reload", headers={"Sec-Fetch-Site": "same-origin"})  # as the UI
        assert r.json() == {
            "success": True,
            "message": "Nginx configuration reloaded successfully.",
        }
        default = admin.get("/nginx/config/get-default").json()["config"]
        assert "ssl_protocols TLSv1.2 TLSv1.3;" in default and "allow 127.0.0.1/32;" in default


def test_certd_renews_on_its_own_without_dropping_a_stream(issued, api_key):
    """A stream runs across the moment certd renews the certificate and reloads nginx: it starts
    once certbot has published its DNS challenge, and the upstream sends the rest of it only
    once a new certificate is served."""

    def txt_records_created() -> int:
        return sum(e["method"] == "POST" for e in issued.acme.cloudflare_state()["log"])

    cert = issued.served()
    created = txt_records_created()
    # certd starts renewing on its own (at half the lifetime); the stream starts then.
    eventually(lambda: txt_records_created() > created, timeout=VALIDITY + 10, interval=0.05)
    renewed: list[x509.Certificate] = []

    def watch() -> None:
        """Let the stream finish once the renewed certificate is served (or it never came)."""
        with contextlib.suppress(AssertionError):
            renewed.append(
                eventually(
                    lambda: (c := issued.served()).serial_number != cert.serial_number and c,
                    timeout=VALIDITY,
                    interval=0.1,
                )
            )
        issued.long.release()

    with issued.openai(api_key) as client:
        stream = client.chat.completions.create(model="long-model", messages=[], stream=True)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    watcher.join(5)
    assert renewed, "certd did not renew the certificate while the stream ran"
    assert text == "".join(f"long{i} " for i in range(40))
    assert renewed[0].not_valid_before_utc > cert.not_valid_before_utc
    with issued.admin() as admin:
        # certd writes its status after nginx serves the renewed certificate (it verifies it)

        def state() -> dict[str, object]:
            [found] = admin.get("/nginx/status").json()["certificates"]
            return found if found["lastRenewal"] is not None else {}

        assert eventually(state, timeout=30)["lastError"] is None
