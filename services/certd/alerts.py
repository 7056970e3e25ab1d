"""certd's webhook events (shared/webhooks.py): a certificate that failed to renew (or to be
obtained), once a day while it fails; a certificate within CERT_EXPIRY_WARNING_DAYS of its end,
once per certificate (a renewed one is announced again when it comes close in turn)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from shared.apikeys import parse_time
from shared.site import CertificateState
from shared.webhooks import Event, Webhooks


def announce(
    webhooks: Webhooks,
    certificates: Iterable[CertificateState],
    warning_days: float,
    now: datetime | None = None,
) -> None:
    """Emit the events the certificates' states call for (nothing without WEBHOOK_URLS)."""
    if not webhooks.urls:
        return
    now = now or datetime.now(UTC)
    for cert in certificates:
        name, domains = cert["name"], list(cert["domains"])
        if cert["lastError"]:
            data: dict[str, object] = {"name": name, "domains": domains, "error": cert["lastError"]}
            day = now.date().isoformat()
            webhooks.emit(
                Event("certificate.renewal_failed", f"certificate-failed:{name}", day, data)
            )
        if cert["notAfter"]:
            left = (parse_time(cert["notAfter"]) - now).total_seconds() / 86400
            if left < warning_days:
                data = {
                    "name": name,
                    "domains": domains,
                    "notAfter": cert["notAfter"],
                    "daysLeft": round(left, 1),
                }
                subject = f"certificate-expiring:{name}"
                webhooks.emit(Event("certificate.expiring", subject, cert["notAfter"], data))
