"""Config and command injection through the nginx management routes: domains, CIDR groups,
emails and http modes that try to carry nginx directives or certbot options, and custom
configurations that try to read files on the server, load a library, reach local sockets or
leave the `http` block. Each is a 400 in the original's shape, and neither the site nor nginx's
running configuration changes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from tests.certd.engine import build_engine
from tests.stack.conftest import Stack

FIELD_ATTACKS = [
    ("/nginx/config/write-default", {"domain": "x.example;\n}", "cidrGroups": []}),
    ("/nginx/config/write-default", {"domain": "x.example\nserver_name evil", "cidrGroups": []}),
    ("/nginx/config/write-default", {"domain": "$(touch /tmp/pwned).example", "cidrGroups": []}),
    ("/nginx/config/write-default", {"domain": "`id`.example", "cidrGroups": []}),
    ("/nginx/config/write-default", {"domain": "--config-dir=/tmp", "cidrGroups": []}),
    (
        "/nginx/config/write-default",
        {"domain": "x.example", "cidrGroups": ["0.0.0.0/0; allow all"]},
    ),
    (
        "/nginx/config/write-default",
        {"domain": "x.example", "cidrGroups": ["10.0.0.0/8\nallow all"]},
    ),
    ("/nginx/config/write-default", {"domain": "x.example", "cidrGroups": ["all"]}),
    ("/nginx/config/write-default", {"domain": "x.example", "cidrGroups": ["::1/128 ; deny"]}),
    ("/nginx/config/write-default", {"domain": "x.example", "cidrGroups": "10.0.0.0/8"}),
    ("/nginx/config/write-default", {"domain": "x.example", "cidrGroups": [], "httpMode": "a;"}),
    ("/nginx/config/write-default", {"domain": ["x.example"], "cidrGroups": []}),
    ("/nginx/config/write-default", {"domain": "x\u2024example", "cidrGroups": []}),
    ("/nginx/config/write-default", {"domain": "x.example\x00.evil", "cidrGroups": []}),
    ("/nginx/certificates/obtain", {"domains": ["x.example", "-d evil.example"]}),
    ("/nginx/certificates/obtain", {"domains": ["x.example --staging"]}),
    ("/nginx/certificates/obtain", {"domains": ["x.example"], "email": "a@b.example --server=x"}),
    ("/nginx/certificates/obtain", {"domains": ["x.example"], "email": "a@b.example\n--x"}),
    ("/nginx/certificates/obtain", {"domains": ["x.example"], "email": "$(id)@b.example"}),
    ("/nginx/certificates/obtain", {"domains": ["../../etc/passwd"]}),
    ("/nginx/certificates/obtain", {"domains": [{"$gt": ""}]}),
]

SECRET_FILE_TEXT = "LEAKME_" + "7" * 20 + " = 1;\n"


def _fingerprint(stack: Stack) -> tuple[str, ...]:
    files = (stack.data / "site.json", stack.home / "nginx" / "server.conf")
    return tuple(hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-" for p in files)


@pytest.fixture
def secret_file(stack: Stack) -> Iterator[str]:
    path = stack.home / "secret.conf"
    path.write_text(SECRET_FILE_TEXT)
    yield str(path)
    path.unlink()


@pytest.mark.parametrize(("path", "body"), FIELD_ATTACKS)
def test_fields_that_carry_directives_or_options_are_400s(
    stack: Stack, admin: httpx.Client, path: str, body: dict[str, object]
):
    before = _fingerprint(stack)
    r = admin.post(path, json=body)
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["success"] is False and isinstance(answer["message"], str)
    assert _fingerprint(stack) == before


def _custom_attacks(secret: str, home: str) -> list[str]:
    return [
        f"include {secret};",
        f'include "{secret}";',
        f"server {{ listen 127.0.0.1:1; location /leak {{ alias {secret}; }} }}",
        f"server {{ listen 127.0.0.1:1; root {home}; autoindex on; }}",
        f"server {{ listen 127.0.0.1:1; access_log {home}/data/apikeys.json; }}",
        f"server {{ listen 127.0.0.1:1; error_log {home}/data/apikeys.json; }}",
        f"server {{ listen 127.0.0.1:1; client_body_temp_path {home}/data; }}",
        f"server {{ listen 127.0.0.1:1; location / {{ root {home}; dav_methods PUT; }} }}",
        f"server {{ listen 127.0.0.1:1; auth_basic on; auth_basic_user_file {secret}; }}",
        f"server {{ listen 127.0.0.1:1; location / {{ proxy_pass http://unix:{home}/x.sock; }} }}",
        f"upstream u {{ server unix:{home}/var/supervisor.sock; }}",
        f'server {{ listen 127.0.0.1:1; set $u "http://unix:{home}/x.sock:"; proxy_pass $u; }}',
        f"server {{ listen unix:{home}/data/apikeys.json; }}",
        f"server {{ listen 127.0.0.1:1; add_header X-A a#b; include {secret}; }}",
        f"server {{ listen 127.0.0.1:1; add_header X-A it's; include {secret}; }}",
        "} load_module /tmp/evil.so; http {",
        "perl_modules /tmp; perl_require evil.pm;",
        f"server {{ listen 127.0.0.1:1;\n  INCLUDE {secret};\n}}",
        # An upload kept at a known path (the library's way onto the machine).
        "server { listen 127.0.0.1:1; client_body_in_file_only on; }",
        "server { listen 127.0.0.1:1; add_header X-File $request_body_file; }",
        # nginx's cache loader deletes what it finds in a cache folder: the key file, the site.
        f"proxy_cache_path {home}/data keys_zone=llmp_x:1m;",
        f"uwsgi_cache_path {home}/data keys_zone=llmp_y:1m;",
        f"server {{ listen 127.0.0.1:1; proxy_temp_path {home}/data; }}",
        # Relative to nginx's root, whatever it is.
        "server { listen 127.0.0.1:1; location /leak { try_files /../../../.env =404; } }",
        # supervisord's XML-RPC on its unix socket, through a variable.
        f"server {{ listen 127.0.0.1:1; set $s unix;\n"
        f"  location /rpc {{ proxy_pass http://$s:{home}/var/supervisor.sock:/RPC2; }} }}",
    ]


@pytest.mark.parametrize("attack", range(len(_custom_attacks("", ""))))  # each one, however many
def test_custom_configs_that_touch_files_or_sockets_are_refused(
    stack: Stack, admin: httpx.Client, secret_file: str, attack: int
):
    config = _custom_attacks(secret_file, str(stack.home))[attack]
    before = _fingerprint(stack)
    serving = admin.get("/nginx/config/get").json()["config"]
    r = admin.post("/nginx/config/update", json={"config": serving + "\n" + config + "\n"})
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False
    assert "LEAKME" not in r.text
    assert _fingerprint(stack) == before
    assert admin.get("/nginx/config/get").json()["config"] == serving


def test_leaving_the_http_block_is_refused_and_the_old_config_keeps_serving(
    stack: Stack, admin: httpx.Client, secret_file: str
):
    serving = admin.get("/nginx/config/get").json()["config"]
    for escape in ("}\nevents { }\nhttp {", "}\nuser root;\nhttp {", "}}}}"):
        r = admin.post("/nginx/config/update", json={"config": serving + "\n" + escape + "\n"})
        assert r.status_code == 400, r.text
        assert r.json()["success"] is False
        assert r.json()["message"].startswith("Custom config, line "), r.json()
        assert admin.get("/nginx/config/get").json()["config"] == serving
    assert httpx.get(stack.url + "/v1/models", timeout=10).status_code == 401  # still serving
    assert httpx.get(stack.url + "/leak", timeout=10).status_code == 404


def test_a_key_in_an_engine_is_refused_before_nginx_loads_the_library(
    stack: Stack, admin: httpx.Client, tmp_path
):
    # `engine:<path>:<key>` makes OpenSSL load <path> while nginx tests the configuration: code
    # run as certd's user. The library reports whether it was ever loaded.
    engine = build_engine(tmp_path / "engine", stack.data / "apikeys.json")
    before = _fingerprint(stack)
    serving = admin.get("/nginx/config/get").json()["config"]
    attack = (
        "server {\n    listen 127.0.0.1:1 ssl;\n"
        f"    ssl_certificate_key engine:{engine.library}:x;\n}}\n"
    )
    r = admin.post("/nginx/config/update", json={"config": serving + "\n" + attack})
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["success"] is False and answer["message"].startswith("Custom config, line ")
    assert answer["message"].endswith(
        '"ssl_certificate_key" takes the absolute path of a file inside '
        f"{stack.home / 'certs'}, without variables"
    )
    assert engine.loaded_by() is None
    assert _fingerprint(stack) == before
