"""The allowlist of the admin's own nginx configuration: what a site needs passes, anything
that names a file, a socket or an engine outside what is allowed is refused with a message
saying what and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.certd.nginx_conf import TlsServer, render_server
from shared.custom_config import CustomConfigError, certificate_files, check_custom_config
from shared.site import SiteError
from tests.conftest import make_settings
from tests.original import server_conf

LE = Path("/etc/letsencrypt")
DATA = "/app/data"

# The original's template (src/static/nginx-server-template.conf) as its write-default fills
# it in; its second server's `${public_ip}` is left for the admin to replace.
ORIGINAL_TEMPLATE = server_conf("llm.example.com", ["192.168.1.0/24"])
EDITED_TEMPLATE = ORIGINAL_TEMPLATE.replace("${public_ip}", "203.0.113.7")


def check(text: str) -> str:
    return check_custom_config(text, LE)


def refused(text: str) -> str:
    with pytest.raises(CustomConfigError) as error:
        check(text)
    return str(error.value)


def test_the_originals_template_passes_once_its_placeholder_is_filled_in():
    assert check(EDITED_TEMPLATE) == EDITED_TEMPLATE
    assert "'${' is not allowed" in refused(ORIGINAL_TEMPLATE)


@pytest.mark.parametrize("http_mode", ["redirect", "serve"])
@pytest.mark.parametrize("tls", [False, True])
def test_llmps_own_configuration_passes_in_every_form(tmp_path, tls, http_mode):
    # What get-default hands the admin as a start must be accepted as it is.
    settings = make_settings(tmp_path)
    live = settings.certbot_dirs[0] / "live" / "a.example"
    servers = [TlsServer(("a.example",), live / "fullchain.pem", live / "privkey.pem")] * tls
    text = render_server(settings, ("10.0.0.0/8",), servers, http_mode)
    assert check_custom_config(text, settings.letsencrypt_dir) == text


@pytest.mark.parametrize(
    "text",
    [
        "server { listen 8080; location / { proxy_pass http://127.0.0.1:8082; } }",
        'server { listen 8080; add_header X-Note "root /; include x;"; }',
        "# include /etc/passwd;\nserver { listen 8080; }",
        "server { listen 8080; error_log stderr warn; access_log off; }",
        "upstream u { server 127.0.0.1:8082 max_fails=2; keepalive 4; }",
        "server { listen [::1]:8443 ssl http2 default_server; server_name _; return 444; }",
        "server { listen 80; return 301 https://$host$request_uri; }",
        "server { listen 80; location /a { rewrite ^/a/(.*)$ /v1/$1 break; } }",
        "server { listen 80; location / { proxy_pass https://api.example.com/v1/; } }",
        "server { listen 80; location / { if ($request_method = POST) { return 405; } } }",
        "limit_req_zone $binary_remote_addr zone=one:10m rate=5r/s;\n"
        "server { listen 80; location / { limit_req zone=one burst=10; gzip on; } }",
        "server { listen 80; location / { set $x 1; add_header X-Y $x always; } }",
        "server { listen 443 ssl; ssl_certificate /etc/letsencrypt/live/x/fullchain.pem;\n"
        "  ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt; }",
    ],
)
def test_what_a_site_needs_passes(text: str):
    assert check(text) == text


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # The engine form loads a shared library while nginx tests the configuration.
        (
            "server { listen 443 ssl; ssl_certificate_key engine:/tmp/evil.so:x; }",
            '"ssl_certificate_key" takes the absolute path of a file inside /etc/letsencrypt',
        ),
        (
            'server { listen 443 ssl; ssl_certificate_key "engine:/tmp/evil.so:x"; }',
            "ssl_certificate_key",
        ),
        ("server { listen 443 ssl; ssl_certificate data:$x; }", "ssl_certificate"),
        ("server { listen 443 ssl; ssl_certificate $x; }", "without variables"),
        ("server { ssl_certificate /etc/letsencrypt/../../tmp/evil.pem; }", "ssl_certificate"),
        ("server { ssl_certificate /etc/letsencrypt; }", "ssl_certificate"),
        ("server { ssl_certificate /etc/letsencryptx/a.pem; }", "ssl_certificate"),
        ("server { ssl_trusted_certificate /etc/passwd; }", "ssl_trusted_certificate"),
        ("server { proxy_ssl_certificate_key engine:x:y; }", "proxy_ssl_certificate_key"),
        ("server { ssl_engine /tmp/evil.so; }", '"ssl_engine" is not allowed'),
        ("server { ssl_conf_command Certificate /tmp/x; }", '"ssl_conf_command"'),
        ("server { ssl_password_file /app/.env; }", '"ssl_password_file"'),
        ("server { ssl_session_ticket_key /app/.env; }", '"ssl_session_ticket_key"'),
        # An upload kept on disk at a path nginx tells: the library's way onto the machine.
        ("server { client_body_in_file_only on; }", '"client_body_in_file_only"'),
        ("server { add_header X-F $request_body_file; }", "$request_body_file"),
        # Caches and temp files at DATA_DIR: nginx's cache loader deletes what it finds there.
        (f"proxy_cache_path {DATA} keys_zone=x:1m;", '"proxy_cache_path"'),
        (f"fastcgi_cache_path {DATA} keys_zone=x:1m;", '"fastcgi_cache_path"'),
        (f"uwsgi_cache_path {DATA} keys_zone=x:1m;", '"uwsgi_cache_path"'),
        (f"scgi_cache_path {DATA} keys_zone=x:1m;", '"scgi_cache_path"'),
        (f"server {{ proxy_temp_path {DATA}; }}", '"proxy_temp_path"'),
        (f"server {{ client_body_temp_path {DATA}; }}", '"client_body_temp_path"'),
        ("server { location / { proxy_cache x; } }", '"proxy_cache"'),
        (f"server {{ location / {{ proxy_store {DATA}/x; }} }}", '"proxy_store"'),
        # Files served from the root, or read outright.
        ("server { location / { try_files /../../../.env =404; } }", '"try_files"'),
        ("server { root /; }", '"root"'),
        ("server { location /x { alias /app/; } }", '"alias"'),
        ("include /app/.env;", '"include"'),
        ("server { location / { ssi on; } }", '"ssi"'),
        ("server { access_log /app/data/apikeys.json; }", '"access_log"'),
        ("server { error_log /app/data/apikeys.json; }", '"error_log"'),
        ("server { location / { if (-f /app/.env) { return 200; } } }", "file tests"),
        ("server { auth_basic x; auth_basic_user_file /app/.env; }", '"auth_basic'),
        # Local sockets, directly or through a variable.
        (
            "server { set $s unix; location / { proxy_pass http://$s:/app/var/sv.sock:/RPC2; } }",
            '"proxy_pass" takes one http:// or https:// URL',
        ),
        ("server { location / { proxy_pass http://unix:/x.sock; } }", '"proxy_pass"'),
        ("server { location / { proxy_pass $u; } }", '"proxy_pass"'),
        ("server { location / { fastcgi_pass 127.0.0.1:9000; } }", '"fastcgi_pass"'),
        ("server { location / { uwsgi_pass unix:/x; } }", '"uwsgi_pass"'),
        ("upstream u { server unix:/app/var/supervisor.sock; }", 'upstream "server"'),
        ("upstream u { server $host:80; }", 'upstream "server"'),
        ("server { listen unix:/app/data/apikeys.json; }", '"listen"'),
        ("server { listen 80 bind=x; }", '"listen"'),
        ("server { allow unix:; }", '"allow" takes one address'),
        ("server { deny 10.0.0.0/8 x; }", '"deny"'),
        # Leaving the http block, modules, scripting.
        ("} load_module /tmp/evil.so; http {", 'unexpected "}"'),
        ("server { listen 80;", 'expecting "}"'),
        ("perl_modules /tmp;", '"perl_modules"'),
        ("server { location / { js_content x.y; } }", '"js_content"'),
        ("server { location / { content_by_lua_block { os.execute('id') } } }", "lua"),
        ("events { }", '"events" block is not allowed'),
        ("server { server { } }", '"server" block is not allowed here'),
        ("upstream u { location / { } }", '"location" block is not allowed here'),
        ("map $a $b { include /app/.env; }", '"map" block'),
        ("server { listen 80; }\nbogus_directive on;", '"bogus_directive"'),
        # What crossplane and nginx could read differently.
        ("server { add_header X a${b;include /app/.env;} }", "'${' is not allowed"),
        ("server { add_header\x0bX y; }", "'\\x0b' is not allowed"),
        ("server {\xa0include /app/.env; }", "'\\xa0' is not allowed"),
        ("server { return 200 a\x00; }", "is not allowed"),
    ],
)
def test_what_reads_files_or_reaches_sockets_is_refused(text: str, says: str):
    assert says in refused(text)


def test_the_message_says_where():
    assert refused("server {\n  listen 80;\n  root /;\n}").startswith("Custom config, line 3: ")


@pytest.mark.parametrize("value", [None, 42, ["include x;"]])
def test_custom_config_must_be_text(value: object):
    with pytest.raises(SiteError, match="Invalid request body"):
        check_custom_config(value, LE)


def test_certificate_files_are_found_in_every_block():
    text = (
        "server { ssl_certificate /etc/letsencrypt/a.pem;\n"
        "  location / { proxy_ssl_certificate_key /etc/letsencrypt/b.pem; } }"
    )
    assert sorted(certificate_files(text)) == ["/etc/letsencrypt/a.pem", "/etc/letsencrypt/b.pem"]


def test_variables_that_tell_paths_are_refused_in_block_arguments_too():
    assert "$document_root" in refused("server { if ($document_root) { return 200; } }")
