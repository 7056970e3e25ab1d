"""llmp/upgrade.py: the original llm-proxy's nginx server.conf becomes the site (data/site.json,
or the database's)."""

from __future__ import annotations

import stat

import pytest

from llmp.upgrade import BACKUP_NAME, import_original_site, parse_server_conf, protect_secrets
from services.certd import nginx
from services.certd.nginx_conf import server_conf_path
from shared.site import read_site
from tests import original
from tests.certd.test_nginx_conf import self_signed
from tests.conftest import free_port, make_settings


def test_parse_the_original_template():
    text = original.server_conf("LLM.example.com", ["203.0.113.0/24", "198.51.100.7", "all"])
    domains, networks = parse_server_conf(text)
    # `${public_ip}` (never substituted by the original) and `allow all` are not taken.
    assert domains == ("llm.example.com",)
    assert networks == ("203.0.113.0/24", "198.51.100.7/32")


def test_parse_skips_comments_and_what_is_not_a_name_or_network():
    text = "server {\n  # server_name old.example.com;\n  server_name _ a.example.com 10.0.0.1;\n"
    text += "  allow 10.0.0.0/8; # allow 192.0.2.0/24;\n  allow x;\n}\n"
    assert parse_server_conf(text) == (("a.example.com",), ("10.0.0.0/8",))


def test_import_takes_the_site_keeps_the_file_and_nginx_accepts_the_result(tmp_path):
    settings = make_settings(tmp_path, port=free_port(), https_port=free_port())
    server = server_conf_path(settings)
    server.parent.mkdir(parents=True)
    text = original.server_conf("llm.example.com", ["203.0.113.0/24"])
    server.write_text(text)
    # certbot named the lineage after the first -d; the certificate lists its names its own way.
    self_signed(settings.letsencrypt_dir, "llm.example.com", ["www.example.com", "llm.example.com"])

    imported = import_original_site(settings)

    assert imported is not None
    assert imported.backup == server.with_name(BACKUP_NAME)
    assert imported.backup.read_text() == text and not server.exists()
    site = read_site(settings.site_file)
    assert site == imported.site and site.generation == 1
    assert site.domains == ("llm.example.com",)
    assert site.cidr_groups[0] == "203.0.113.0/24"
    assert {"127.0.0.0/8", "192.168.0.0/16", "::1/128"} <= set(site.cidr_groups)
    assert site.http_mode == "serve"
    # The certificate on disk is the one wanted: certd will not ask certbot for another.
    assert [(c.name, c.domains) for c in site.wanted_certificates()] == [
        ("llm.example.com", ("llm.example.com", "www.example.com"))
    ]
    nginx.apply(settings)  # renders from site.json, tested with `nginx -t`
    rendered = server.read_text()
    assert "allow 203.0.113.0/24;" in rendered and "localhost:8080" not in rendered
    assert "ssl_certificate" in rendered and "return 308" not in rendered
    assert import_original_site(settings) is None  # once: site.json exists now


def test_no_import_for_llmps_own_config_or_without_one(tmp_path):
    settings = make_settings(tmp_path)
    assert import_original_site(settings) is None
    nginx.apply(settings)
    ours = server_conf_path(settings).read_text()
    assert import_original_site(settings) is None
    assert server_conf_path(settings).read_text() == ours
    assert not settings.site_file.exists()


def test_with_a_database_the_site_goes_into_it_once(tmp_path, database_url):
    from shared import storage

    settings = make_settings(tmp_path, database_url=database_url)
    server = server_conf_path(settings)
    server.parent.mkdir(parents=True)
    server.write_text(original.server_conf("llm.example.com", ["203.0.113.0/24"]))
    imported = import_original_site(settings)
    assert imported is not None and not settings.site_file.exists()
    assert storage.site_store(settings).read_site() == imported.site
    server.write_text(original.server_conf("other.example.com", []))  # another replica's
    assert import_original_site(settings) is None  # the cluster has its site already
    assert storage.site_store(settings).read_site() == imported.site


def test_an_original_site_is_not_lost_when_the_database_is_away(tmp_path):
    from shared.site import SiteError

    settings = make_settings(tmp_path, database_url=f"postgresql:///x?host={tmp_path}")
    server = server_conf_path(settings)
    server.parent.mkdir(parents=True)
    server.write_text(original.server_conf("llm.example.com", []))
    with pytest.raises(SiteError):
        import_original_site(settings)
    assert server.exists()  # not moved aside: the next start imports it


def test_an_earlier_backup_is_not_overwritten(tmp_path):
    settings = make_settings(tmp_path)
    server = server_conf_path(settings)
    server.parent.mkdir(parents=True)
    server.with_name(BACKUP_NAME).write_text("first")
    server.write_text("server { listen 8443; server_name b.example.com; }\n")
    imported = import_original_site(settings)
    assert imported is not None and imported.backup.name == BACKUP_NAME + ".1"
    assert server.with_name(BACKUP_NAME).read_text() == "first"
    # No allow lines: the admin networks stay llmp's default (loopback and private ranges).
    assert imported.site.domains == ("b.example.com",) and imported.site.cidr_groups == ()


def test_the_originals_secrets_become_private(tmp_path):
    readonly = tmp_path / "cloudflare_credentials"
    settings = make_settings(tmp_path, cloudflare_credentials=readonly)
    env_file = tmp_path / ".env"
    env_file.write_text("JWT_SECRET=x\n")
    settings.data_dir.mkdir()
    settings.apikeys_file.write_text('{"keys": []}')
    readonly.write_text("dns_cloudflare_api_token = x\n")
    for path, mode in ((env_file, 0o644), (settings.apikeys_file, 0o664), (readonly, 0o444)):
        path.chmod(mode)
    link = tmp_path / "link"
    link.symlink_to(env_file)

    changed = protect_secrets(settings, env_file)

    assert changed == [(env_file, 0o644), (settings.apikeys_file, 0o664), (readonly, 0o444)]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.apikeys_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(readonly.stat().st_mode) == 0o400  # never more than it had
    assert protect_secrets(settings, env_file) == []  # once
    assert protect_secrets(settings, link) == []  # a link is not followed
