"""Upgrading from the original llm-proxy: llmp starts on its files, as it left them, and serves
every key, the key's history, and the site its nginx config described."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import openai
from cryptography import x509

from services.certd.nginx_conf import HEADER
from shared.apikeys import ApiKey, read_keys
from shared.site import read_site
from tests import original
from tests.certd.test_nginx_conf import self_signed
from tests.conftest import eventually, free_port
from tests.stack.conftest import Stack

DOMAIN = "llm.example.com"


def _served_certificate(port: int) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_llmp_starts_on_the_originals_files(tmp_path, fleet):
    home, data = tmp_path, tmp_path / "data"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    original.write_keys(data / "apikeys.json", [alice, bob])
    keys_as_written = (data / "apikeys.json").read_bytes()
    now = int(time.time() * 1000)
    hour = 3600 * 1000
    original.write_csv(data, alice, [(now - 3 * hour, now - 3 * hour + 900), (now - hour, None)])
    original.write_csv(data, bob, [(now - 2 * hour, now - 2 * hour + 1500)])
    (home / "nginx").mkdir()
    old_conf = original.server_conf(DOMAIN, ["203.0.113.0/24"])
    (home / "nginx" / "server.conf").write_text(old_conf)
    self_signed(home / "certs", DOMAIN, [DOMAIN])
    (home / "certs" / "archive" / DOMAIN / "privkey1.pem").chmod(0o600)

    https_port = free_port()
    stack = Stack(home, [fleet["a"], fleet["b"]], env={"HTTPS_PORT": str(https_port)})
    # The original's .env: its names, the upstreams in its `url|key` grammar, its credentials.
    (home / "env").write_text(original.env_file(stack.env["TARGET_URLS"], stack.port))
    for name in ("PORT", "TARGET_URLS", "JWT_SECRET", "AUTH_USERNAME", "AUTH_PASSWORD"):
        del stack.env[name]
    stack.start()
    try:
        # Every key works, with the official client, on plain HTTP as before.
        for key, model in ((alice, "model-a"), (bob, "model-b")):
            client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key.key, max_retries=0)
            chat = client.chat.completions.create(model=model, messages=[])
            assert chat.choices[0].message.content == f"hello from {model[-1]}"
        assert read_keys(data / "apikeys.json") == [alice, bob]
        assert (data / "apikeys.json").read_bytes() == keys_as_written  # read, not rewritten

        # Each key's history, imported from its CSV, beside the new request.
        with httpx.Client(base_url=stack.url, timeout=10) as admin:
            login = {"username": "admin", "password": "secure_password"}
            assert admin.post("/auth/login", json=login).status_code == 200

            def records(key: ApiKey) -> list[dict[str, object]]:
                answer = admin.get(f"/api/analytics/{key.id}")
                assert answer.status_code == 200, answer.text
                return answer.json()["records"]

            history = eventually(lambda: len(r := records(alice)) == 3 and r)
            assert sorted((r["startTime"], r["endTime"]) for r in history)[:2] == [
                (now - 3 * hour, now - 3 * hour + 900),
                (now - hour, None),  # the original's `null`: a failure
            ]
            assert eventually(lambda: len(records(bob)) == 2)

        # The site of the original's server.conf: its domain on HTTPS with its certificate, its
        # admin networks (and the private ones), plain HTTP still serving; the file kept aside.
        site = read_site(data / "site.json")
        assert site.domains == (DOMAIN,) and site.http_mode == "serve"
        assert site.cidr_groups[0] == "203.0.113.0/24" and "127.0.0.0/8" in site.cidr_groups
        assert (home / "nginx" / "server.conf.llm-proxy").read_text() == old_conf
        rendered = (home / "nginx" / "server.conf").read_text()
        assert rendered.startswith(HEADER) and f"server_name {DOMAIN};" in rendered
        served = _served_certificate(https_port)
        names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [DOMAIN]
        answer = httpx.get(
            f"https://127.0.0.1:{https_port}/v1/models",
            headers={"Authorization": f"Bearer {bob.key}"},
            verify=False,
        )
        assert answer.status_code == 200
        assert "took over llm-proxy's nginx site" in stack.output()
    finally:
        assert stack.stop() == 0, stack.output()
