"""certd's webhook events against the real thing (certbot, pebble, nginx) and a real HTTP
receiver: a certificate that fails is announced once a day, one close to its end once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.certd import alerts
from services.certd.reconcile import Certd
from shared.site import CertificateState, update_site
from shared.webhooks import Ledger, Webhooks
from tests.conftest import eventually
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow  # pebble, certbot and nginx

SECRET = "c" * 32


@pytest.fixture
def world(acme, echo_settings, run_nginx):
    with Receiver() as receiver:
        settings = echo_settings(
            **acme.settings(),
            webhook_urls=receiver.url,
            webhook_secret=SECRET,
            cert_expiry_warning_days=100_000,  # every certificate pebble issues is "close"
        )
        run_nginx(settings)
        yield settings, receiver


def test_a_failed_and_an_expiring_certificate_are_announced_once(world):
    settings, receiver = world
    update_site(
        settings.site_file,
        lambda s: s.with_certificate(["app.example.test"]).with_certificate(["x.other.test"]),
    )
    certd = Certd(settings)
    certd.step()
    eventually(lambda: len(receiver.received) == 2)
    certd.save()  # the same states again: nothing new to say
    certd.webhooks.close()
    by_type = {e["type"]: e["data"] for e in receiver.events()}
    assert len(receiver.received) == 2 and all(r.signed_with(SECRET) for r in receiver.received)
    failed = by_type["certificate.renewal_failed"]
    assert failed["name"] == "x.other.test"
    assert "Unable to determine zone_id for x.other.test" in failed["error"]
    expiring = by_type["certificate.expiring"]
    assert expiring["name"] == "app.example.test" and expiring["notAfter"].endswith("Z")
    assert expiring["daysLeft"] >= 0  # pebble here issues short-lived certificates


def test_expiry_is_announced_inside_the_warning_only_and_failures_once_a_day(tmp_path):
    with Receiver() as receiver:
        hooks = Webhooks((receiver.url,), SECRET, Ledger(tmp_path / "webhooks.json"))
        now = datetime(2026, 6, 1, tzinfo=UTC)

        def cert(ends_in: float, error: str | None = None) -> CertificateState:
            """A certificate that ends `ends_in` days after `now`."""
            end = (now + timedelta(days=ends_in)).isoformat().replace("+00:00", "Z")
            return {
                "name": "a",
                "domains": ["a.test"],
                "notAfter": end,
                "lastRenewal": None,
                "lastError": error,
            }

        alerts.announce(hooks, [cert(15)], 14, now)  # not yet
        alerts.announce(hooks, [cert(13, "boom")], 14, now)
        alerts.announce(hooks, [cert(13, "boom")], 14, now + timedelta(hours=1))  # same day
        alerts.announce(hooks, [cert(13, "boom")], 14, now + timedelta(days=1))  # next day
        alerts.announce(hooks, [cert(20)], 14, now + timedelta(days=2))  # renewed: quiet
        eventually(lambda: hooks.pending == 0 and len(receiver.received) >= 3)
        hooks.close()
    types = sorted(e["type"] for e in receiver.events())
    assert types == [
        "certificate.expiring",
        "certificate.renewal_failed",
        "certificate.renewal_failed",
    ]
