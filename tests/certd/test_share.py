"""Certificates shared by replicas through PostgreSQL (services/certd/share.py, pgshare.py, and
certd's leader in reconcile.py): two replicas' certds, each with its own nginx and folders, one
database and one pebble. One certbot run; both nginx serve the certificate."""

from __future__ import annotations

import stat
import threading
from dataclasses import replace

import psycopg
import pytest

from services.certd import certs
from services.certd.pgshare import PgShare, seal, sealing_key, unseal
from services.certd.reconcile import Certd
from services.certd.share import ShareError
from shared import storage
from tests.certd.servers import tls_get
from tests.conftest import eventually

pytestmark = pytest.mark.slow  # pebble, certbot, nginx and PostgreSQL

HOST = "app.example.test"


def test_a_sealed_key_opens_only_with_the_same_secret_and_lineage():
    key = sealing_key("s" * 32)
    sealed = seal(key, b"-----BEGIN PRIVATE KEY-----", b"a.example.test")
    assert b"PRIVATE" not in sealed
    assert unseal(key, sealed, b"a.example.test") == b"-----BEGIN PRIVATE KEY-----"
    with pytest.raises(ShareError, match="JWT_SECRET"):
        unseal(sealing_key("t" * 32), sealed, b"a.example.test")
    with pytest.raises(ShareError):
        unseal(key, sealed, b"b.example.test")  # moved to another lineage


@pytest.fixture
def replicas(acme, echo_settings, run_nginx, database_url, tmp_path):
    made = []
    for name in ("a", "b"):
        folder = tmp_path / name
        settings = echo_settings(
            **acme.settings(),
            database_url=database_url,
            replica_name=name,
            jwt_secret="x" * 32,
            data_dir=folder / "data",
            state_dir=folder / "var",
            nginx_conf_dir=folder / "nginx",
            letsencrypt_dir=folder / "certs",
        )
        run_nginx(settings)
        made.append(settings)
    return made


def test_one_leader_obtains_and_every_replica_serves_it(replicas, acme, database_url):
    a, b = replicas
    site = storage.site_store(a).update_site(
        lambda s: replace(s.with_certificate([HOST]), cidr_groups=("127.0.0.1/32",))
    )
    certd_a, certd_b = Certd(a), Certd(b)
    woken, woken_a = threading.Event(), threading.Event()
    stop_watch = certd_b.store.watch(woken.set)
    stop_watch_a = certd_a.store.watch(woken_a.set)
    try:
        certd_a.step()  # the first to ask leads: it runs certbot
        assert certd_a._leading
        lineage = certs.load(a.certbot_dirs[0], HOST)
        assert lineage is not None
        assert woken.wait(10)  # b heard of it (the site, then the certificates)
        certd_b.step()
        assert not certd_b._leading
        # certbot never ran on b: it has no logs, no work folder; it has the lineage and account.
        assert not b.certbot_dirs[2].exists() and not b.certbot_dirs[1].exists()
        copy = certs.load(b.certbot_dirs[0], HOST)
        assert copy is not None and copy.serial == lineage.serial
        assert certs.read_account(b.certbot_dirs[0]) == certs.read_account(a.certbot_dirs[0])
        key = (b.certbot_dirs[0] / "archive" / HOST / "privkey1.pem").stat()
        assert stat.S_IMODE(key.st_mode) == 0o600
        # Both nginx serve it.
        context = acme.ssl_context()
        for settings in (a, b):
            code, _, der = tls_get(settings.https_port, "/v1/models", context, HOST)
            assert code == 200 and certs.served_serial(der) == lineage.serial
        # The admin's view is the same from either replica, and says it is served.
        view = storage.site_store(a).read_status()
        assert view == storage.site_store(b).read_status()
        assert view["appliedGeneration"] == site.generation and view["nginx"]["ok"]
        [cert] = view["certificates"]
        assert cert["notAfter"] is not None and cert["lastError"] is None
        # No private key in the clear in the database.
        secret = (a.certbot_dirs[0] / "live" / HOST / "privkey.pem").read_bytes()
        with psycopg.connect(database_url) as conn:
            dump = b"".join(
                bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
                for table in ("llmp_certificates", "llmp_certbot_account")
                for row in conn.execute(f"SELECT * FROM {table}").fetchall()
                for v in row
            )
        assert secret not in dump and b"PRIVATE KEY" not in dump and b'"d"' not in dump

        # The leader goes away: b takes over with a's account, and a follows.
        certd_a.leader.release()
        certd_a._leading = False  # as at a's stop (services/certd/__main__.py)
        log_before = len(acme.cloudflare_state()["log"])
        woken.clear()
        two = storage.site_store(a).update_site(lambda s: s.with_certificate(["two.example.test"]))
        assert woken.wait(10)
        certd_b.step()
        assert certd_b._leading
        assert certs.load(b.certbot_dirs[0], "two.example.test") is not None
        assert len(acme.cloudflare_state()["log"]) > log_before
        # No second ACME account: b used the one a registered.
        assert certs.read_account(b.certbot_dirs[0]) == certs.read_account(a.certbot_dirs[0])
        # a heard of the change (its watch, which woke it as it wakes certd's loop).
        eventually(lambda: woken_a.is_set() and certd_a.store.signature() != certd_a._signature)
        certd_a.step()
        assert not certd_a._leading
        eventually(lambda: certs.load(a.certbot_dirs[0], "two.example.test") is not None)
        view = storage.site_store(b).read_status()
        assert view["appliedGeneration"] == two.generation
        assert {c["name"] for c in view["certificates"] if c["notAfter"]} == {
            HOST,
            "two.example.test",
        }

        # The new leader renews what the first one obtained (its renewal settings, made for
        # a's folders, work in b's), and a serves the renewed certificate.
        argv = [*certd_b.certbot.renew_argv(), "--force-renewal", f"--cert-name={HOST}"]
        certd_b.certbot.run(argv)
        renewed = certs.load(b.certbot_dirs[0], HOST)
        assert renewed is not None and renewed.serial != lineage.serial
        seen = certd_a.store.signature()
        certd_b.publish_certificates()
        eventually(lambda: certd_a.store.signature() != seen)
        certd_a.step()
        assert certs.load(a.certbot_dirs[0], HOST).serial == renewed.serial
        der = tls_get(a.https_port, "/v1/models", context, HOST)[2]
        assert certs.served_serial(der) == renewed.serial
    finally:
        stop_watch()
        stop_watch_a()
        certd_a.leader.release()
        certd_b.leader.release()


def test_a_share_sealed_with_another_secret_does_not_open(database_url):
    PgShare(database_url, "x" * 32).publish([], {"k/regr.json": b"{}"})
    with pytest.raises(ShareError, match="JWT_SECRET"):
        PgShare(database_url, "y" * 32).fetch()


def test_a_shared_certificate_nginx_does_not_serve_is_rolled_back(replicas, acme, tmp_path):
    """A new version whose key is not its certificate's: the replica that installs it tests,
    reloads and verifies nginx as after certbot, finds the old one still served, and puts the
    old one back."""
    from tests.certd.test_nginx_conf import self_signed

    a, b = replicas
    storage.site_store(a).update_site(lambda s: s.with_certificate([HOST]))
    certd_a, certd_b = Certd(a), Certd(b)
    woken = threading.Event()
    stop_watch = certd_b.store.watch(woken.set)
    try:
        certd_a.step()
        eventually(lambda: certd_b.store.signature() != certd_b._signature)
        certd_b.step()
        good = certs.load(b.certbot_dirs[0], HOST)
        assert good is not None and not certd_b._leading
        # The leader shares a version 2 whose key does not match its certificate.
        self_signed(tmp_path / "other", HOST, [HOST])
        other = (tmp_path / "other" / "archive" / HOST / "cert1.pem").read_bytes()
        shared = certs.read_files(a.certbot_dirs[0], HOST)
        assert shared is not None
        bad = replace(shared, version=2, pems={**shared.pems, "cert": other, "fullchain": other})
        before = certd_b.store.signature()
        assert certd_a.share is not None and certd_a.share.publish([bad], {}) == [HOST]
        eventually(lambda: certd_b.store.signature() != before)
        certd_b.step()
        # Still the good one on disk and on the wire, and the report says why.
        assert certs.load(b.certbot_dirs[0], HOST).serial == good.serial
        der = tls_get(b.https_port, "/v1/models", acme.ssl_context(), HOST)[2]
        assert certs.served_serial(der) == good.serial
        [cert] = certd_b.store.own_status()["certificates"]
        assert "not served here" in cert["lastError"]
    finally:
        stop_watch()
        certd_a.leader.release()
        certd_b.leader.release()
