"""Rendering the nginx configuration from a site and the certificates on disk."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.api import __main__ as api_main
from services.certd import certs, nginx, nginx_conf
from services.certd.nginx_conf import render_site, tls_servers
from services.proxy import __main__ as proxy_main
from shared.site import Site
from tests.conftest import make_settings


def self_signed(config_dir: Path, name: str, domains: list[str], days: float = 90) -> None:
    """A lineage laid out as certbot does (live/ symlinks into archive/), self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, now + datetime.timedelta(days=days - 2)))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), False)
        .sign(key, hashes.SHA256())
    )
    archive, live = config_dir / "archive" / name, config_dir / "live" / name
    archive.mkdir(parents=True)
    live.mkdir(parents=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (archive / "cert1.pem").write_bytes(pem)
    (archive / "fullchain1.pem").write_bytes(pem)
    (archive / "privkey1.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for kind in ("cert", "fullchain", "privkey"):
        (live / f"{kind}.pem").symlink_to(f"../../archive/{name}/{kind}1.pem")


def test_plain_http_until_a_certificate_exists(tmp_path):
    settings = make_settings(tmp_path, port=8080)
    text = render_site(settings, Site(cidr_groups=("203.0.113.0/24",)), {})
    assert "ssl" not in text and "return 308" not in text
    assert "allow 203.0.113.0/24;" in text and "allow 127.0.0.0/8;" not in text
    assert "allow 127.0.0.0/8;" in render_site(settings, Site(), {})  # before any are set


def test_tls_servers_per_certificate_and_redirect(tmp_path):
    settings = make_settings(tmp_path, port=8080, https_port=8443)
    config_dir = settings.certbot_dirs[0]
    self_signed(config_dir, "b.example", ["b.example", "*.b.example"])
    self_signed(config_dir, "a.example", ["a.example", "b.example"])
    self_signed(config_dir, "old.example", ["old.example"], days=-1)  # expired: still served
    (config_dir / "live" / "broken.example").mkdir()
    found = certs.lineages(config_dir)
    assert list(found) == ["a.example", "b.example", "old.example"]
    site = Site(domains=("b.example",))
    servers = tls_servers(site, found)
    # The site's domain first (the default server); a name is served by one certificate only.
    assert [s.server_names for s in servers] == [
        ("b.example", "*.b.example"),
        ("a.example",),
        ("old.example",),
    ]
    text = render_site(settings, site, found)
    # One per certificate, and a default one for names that are none of them.
    assert text.count("listen 127.0.0.1:8443 ssl") == 4
    assert text.count("default_server") == 2  # :8080's and :8443's, for other names
    assert text.count("return 421;") == 2
    assert text.count("ssl_protocols TLSv1.2 TLSv1.3;") == 4
    assert "return 308 https://$host:8443$request_uri;" in text  # the site's names
    assert "return 308 https://b.example:8443$request_uri;" in text  # addresses
    served = render_site(settings, Site(domains=("b.example",), http_mode="serve"), found)
    assert "return 308" not in served and served.count("location ^~ /v1/") == 5
    nginx.test(settings, text)  # nginx itself accepts it, certificates and all
    assert "llmp-probe" not in text


def test_custom_config_is_used_verbatim(tmp_path):
    settings = make_settings(tmp_path)
    assert render_site(settings, Site(custom_config="# mine\n"), {}) == "# mine\n"


def test_renewal_time_follows_certbot(tmp_path):
    self_signed(tmp_path, "short", ["short.example"], days=6)
    self_signed(tmp_path, "long", ["long.example"], days=90)
    short, long = certs.load(tmp_path, "short"), certs.load(tmp_path, "long")
    assert short.renewal_time() - short.not_before == datetime.timedelta(days=3)
    assert long.renewal_time() - long.not_before == datetime.timedelta(days=60)
    assert long.renewed_at is None


def test_nginx_lets_idle_upstream_connections_go_before_the_api_and_the_proxy_do(tmp_path):
    # Closed first by uvicorn, a kept-alive connection could be closed under a request nginx
    # was sending on it (a POST then failed with "Server disconnected").
    text = nginx_conf.render_server(make_settings(tmp_path), admin_cidrs=[])
    upstreams = re.findall(r"upstream (\w+) \{[^}]*keepalive_timeout (\d+)s;", text)
    assert upstreams == [("llmp_proxy", "60"), ("llmp_api", "60")]
    assert nginx_conf.BACKEND_KEEPALIVE == 60
    for options in (api_main.SERVER_OPTIONS, proxy_main.SERVER_OPTIONS):
        assert options["timeout_keep_alive"] > nginx_conf.BACKEND_KEEPALIVE
