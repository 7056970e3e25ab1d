"""certd's work: make nginx and the certificates what the site asks for, keep the
certificates renewed, and say what happened (the site and the report are in the site store,
`shared.sitestore`: `data/site.json` and `data/certd/status.json`, or PostgreSQL).

Invariants:
- one thing at a time: the caller runs `step()` from a single thread, so certbot runs never
  overlap and the status has one writer;
- a generation counts as applied only once its whole reconcile finished and the status saying
  so is on disk; killed at any point before, certd does it again on restart (obtaining a
  certificate that exists, or rendering a config that is live, changes nothing);
- nginx only ever gets a configuration `nginx -t` accepted; a reload that fails, or after which
  nginx does not serve the certificates it should, rolls back to the previous files;
- renewal checks run at start, every RENEW_INTERVAL_SECONDS and when a certificate reaches
  certbot's renewal time, never more often than RENEW_RETRY_SECONDS after a check that failed;
- with several replicas (DATABASE_URL), only the leader of the job `certd` (`shared.leader`)
  runs certbot, and publishes what it made (`services.certd.share`); every other replica's
  certd writes the shared certificates into its own LETSENCRYPT_DIR when they change, then
  tests, reloads and verifies nginx as after a certbot run of its own. A replica that becomes
  the leader first takes what the last one made (certbot's account and renewal settings too);
- where TLS ends at a load balancer (TLS_TERMINATION), certd obtains and renews nothing.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Hashable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from services.certd import alerts, certs, nginx
from services.certd.certbot import Certbot, CertbotError
from services.certd.certs import Lineage
from services.certd.nginx_conf import main_conf_path, render_site, server_conf_path, tls_servers
from services.certd.share import ShareError, certificate_share
from shared import storage
from shared.settings import Settings
from shared.site import (
    CertdStatus,
    CertificateRequest,
    CertificateState,
    NginxState,
    Outcome,
    Site,
    SiteError,
    no_outcome,
)
from shared.sitestore import SiteStore
from shared.webhooks import webhooks_for

log = logging.getLogger("certd")

VERIFY_SECONDS = 5.0


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _outcome(handled: int, error: str | None) -> Outcome:
    return {"handled": handled, "ok": error is None, "message": error, "at": time.time()}


def _probe_name(domains: tuple[str, ...]) -> str:
    name = domains[0]
    return "llmp-probe." + name[2:] if name.startswith("*.") else name


class Certd:
    def __init__(self, settings: Settings, store: SiteStore | None = None) -> None:
        self.settings = settings
        self.store = store or storage.site_store(settings)
        self.certbot = Certbot(settings)
        self.site = Site()
        self.site_error: str | None = None
        self._signature: Hashable = None
        self._site_loaded = False  # a valid site (or none) was read at least once
        self._reconciled = False  # since this process started
        previous = self.store.own_status()
        self.applied_generation = previous["appliedGeneration"] if previous else -1
        self.applied = previous.get("applied", no_outcome()) if previous else no_outcome()
        self.reload = previous.get("reload", no_outcome()) if previous else no_outcome()
        self.renew = previous.get("renew", no_outcome()) if previous else no_outcome()
        self.nginx: NginxState = {"ok": True, "error": None, "at": time.time()}
        self.cert_errors: dict[str, str] = {}
        self.attempts: dict[str, float] = {}
        for cert in previous.get("certificates", []) if previous else []:
            if cert.get("lastError"):
                self.cert_errors[cert["name"]] = cert["lastError"]  # type: ignore[assignment]
            attempt: Any = cert.get("lastAttempt")
            if isinstance(attempt, float | int):
                self.attempts[cert["name"]] = float(attempt)
        self.next_check = 0.0  # check renewals at start
        self.webhooks = webhooks_for(settings)
        self.share = certificate_share(settings.database_url, settings.jwt_secret)
        self.leader = storage.leader(settings, "certd", f"llmp-certd-leader-{settings.replica}")
        self._leading = False
        self._synced = False  # the shared certificates were installed at least once

    # The loop's entry points ----------------------------------------------------------------

    def step(self) -> None:
        """Do whatever is due: install certificates another replica shared, apply a new
        generation, check renewals."""
        changed = self.load_site()
        if self.share is not None and (changed or not self._synced):
            self.sync_certificates()
        if self._site_loaded and (
            not self._reconciled or self.site.generation != self.applied_generation
        ):
            self.reconcile(self.site)
            self._reconciled = True
        if time.time() >= self.next_check:
            self.check_renewals()

    def seconds_to_next_check(self) -> float:
        return max(0.0, self.next_check - time.time())

    def heartbeat_state(self) -> dict[str, Any]:
        return {
            # Until the first reconcile, nginx's state is unknown (and /healthz says so).
            "nginx": self.nginx if self._reconciled else None,
            "appliedGeneration": self.applied_generation,
            "generation": self.site.generation,
            "last_error": self.site_error,
        }

    def load_site(self) -> bool:
        """Re-read the site if it may have changed (True then); one that cannot be read (an
        invalid site.json, the database away) leaves the last good site in force."""
        signature = self.store.signature()
        if signature == self._signature and self._site_loaded:
            return False
        self._signature = signature
        try:
            self.site = self.store.read_site()
        except SiteError as exc:
            if str(exc) != self.site_error:
                log.error("keeping the last good site", extra={"fields": {"error": exc}})
            self.site_error = str(exc)
            return True
        self.site_error = None
        self._site_loaded = True
        return True

    # Several replicas -----------------------------------------------------------------------

    def leading(self) -> bool:
        """May this certd run certbot now? Always on one box; with several replicas, while it
        leads the job `certd` (taking over what the last leader made when it becomes one)."""
        if self.share is None:
            return True
        was, self._leading = self._leading, self.leader.lead()
        if self._leading and not was:
            log.info("leading: certbot runs here")
            self.install_certificates()
        return self._leading

    def sync_certificates(self) -> None:
        """On a replica that does not lead: install what the leader shared, and make nginx
        serve it (tested, reloaded, verified, as after a certbot run). If nginx then does not
        serve it, the previous version of each certificate installed is put back, and served."""
        if self.leading():
            self._synced = True
            return
        installed = self.install_certificates()
        self._synced = True
        if not installed:
            return
        problem = self.apply_nginx(self.site, force_reload=True)
        if problem:
            config_dir = self.settings.certbot_dirs[0]
            for name, previous in installed.items():
                self.cert_errors[name] = f"the shared certificate is not served here: {problem}"
                if previous is not None:
                    certs.write_files(config_dir, previous)
            log.error(
                "shared certificates not served; the previous ones put back",
                extra={"fields": {"names": ",".join(installed), "error": problem}},
            )
            self.apply_nginx(self.site, force_reload=True)
        else:
            for name in installed:
                self.cert_errors.pop(name, None)
        self.save()

    def install_certificates(self) -> dict[str, certs.LineageFiles | None]:
        """Write the shared certificates that differ from ours into LETSENCRYPT_DIR; for each
        name written, the version there was before (None: none)."""
        assert self.share is not None
        config_dir = self.settings.certbot_dirs[0]
        installed: dict[str, certs.LineageFiles | None] = {}
        try:
            lineages, account = self.share.fetch()
            certs.write_account(config_dir, account)
            for files in lineages:
                local = certs.read_files(config_dir, files.name)
                if local is None or local.fingerprint != files.fingerprint:
                    certs.write_files(config_dir, files)
                    installed[files.name] = local
        except (ShareError, OSError, ValueError) as exc:
            log.error("shared certificates not installed", extra={"fields": {"error": exc}})
        if installed:
            log.info(
                "shared certificates installed", extra={"fields": {"names": ",".join(installed)}}
            )
        return installed

    def publish_certificates(self) -> None:
        """The leader: share every lineage (those that changed are written) and the account."""
        if self.share is None:
            return
        config_dir = self.settings.certbot_dirs[0]
        lineages = [certs.read_files(config_dir, name) for name in certs.lineages(config_dir)]
        try:
            written = self.share.publish(
                [files for files in lineages if files is not None], certs.read_account(config_dir)
            )
        except (ShareError, OSError) as exc:
            log.error("certificates not shared", extra={"fields": {"error": exc}})
            return
        if written:
            log.info("certificates shared", extra={"fields": {"names": ",".join(written)}})

    # Reconcile ------------------------------------------------------------------------------

    def reconcile(self, site: Site) -> None:
        new = site.generation != self.applied_generation
        log.info("reconciling", extra={"fields": {"generation": site.generation}})
        reload_wanted = site.reload_requested > self.reload["handled"]
        # The config first, with the certificates there are: a change of CIDR groups does not
        # wait for certbot.
        nginx_error = self.apply_nginx(site, force_reload=reload_wanted)
        if reload_wanted:
            self.reload = _outcome(site.reload_requested, nginx_error)
        if site.renew_requested > self.renew["handled"]:
            self.renew = _outcome(site.renew_requested, self.renew_certificates())
        obtained = False
        for request in self.missing(site) if self.leading() else []:
            if new or self._retry_due(request.name):
                obtained = self.obtain(site, request) is None or obtained
        if obtained:
            nginx_error = self.apply_nginx(site)
            self.next_check = min(self.next_check, self.next_renewal_check(failed=False))
        # The generation's outcome is the config's; each certificate reports its own.
        self.applied_generation = site.generation
        self.applied = _outcome(site.generation, nginx_error)
        self.save()

    def wanted(self, site: Site) -> tuple[CertificateRequest, ...]:
        """The certificates to obtain: none where TLS ends at a load balancer."""
        if self.settings.tls_termination == "load-balancer":
            return ()
        return site.wanted_certificates()

    def missing(self, site: Site) -> list[CertificateRequest]:
        """Certificates the site wants that are not on disk with exactly their domains."""
        found = certs.lineages(self.settings.certbot_dirs[0])
        return [
            request
            for request in self.wanted(site)
            if request.name not in found or set(found[request.name].domains) != set(request.domains)
        ]

    def obtain(self, site: Site, request: CertificateRequest) -> str | None:
        email = site.acme_email or self.settings.acme_email
        try:
            run = self.certbot.obtain(request.name, request.domains, email)
        except CertbotError as exc:
            self.attempts[request.name] = time.time()  # retries count from the failure's end
            log.error(
                "certificate not obtained", extra={"fields": {"name": request.name, "error": exc}}
            )
            self.cert_errors[request.name] = exc.reason  # the whole of it is in the log line
            return exc.reason
        log.info(
            "certificate obtained",
            extra={
                "fields": {
                    "name": request.name,
                    "domains": ",".join(request.domains),
                    "seconds": f"{run.seconds:.1f}",
                }
            },
        )
        self.attempts[request.name] = time.time()
        self.cert_errors.pop(request.name, None)
        self.publish_certificates()
        return None

    def _retry_due(self, name: str) -> bool:
        last = self.attempts.get(name, 0.0)
        return time.time() - last >= self.settings.renew_retry_seconds

    # nginx ----------------------------------------------------------------------------------

    def apply_nginx(self, site: Site, force_reload: bool = False) -> str | None:
        """Render and apply the config; verify what nginx serves. Returns the error, if any."""
        settings = self.settings
        lineages = certs.lineages(settings.certbot_dirs[0])
        old_main = _read(main_conf_path(settings))
        old_server = _read(server_conf_path(settings))
        try:
            # Without a valid site.json yet, keep the live routes (only reload them).
            server = render_site(settings, site, lineages)
            if not self._site_loaded and old_server is not None:
                server = old_server
            applied = nginx.apply(settings, server, force_reload)
            problem = self.verify(site, lineages) if applied.reloaded else None
            if problem and applied.changed and old_main is not None and old_server is not None:
                nginx.rollback(settings, old_main, old_server)
        except (nginx.NginxError, SiteError) as exc:  # SiteError: a custom config not allowed
            problem = str(exc)
        else:
            if applied.changed or applied.reloaded:
                log.info(
                    "nginx config applied",
                    extra={"fields": {"changed": applied.changed, "reloaded": applied.reloaded}},
                )
        if problem:
            log.error("nginx config not applied", extra={"fields": {"error": problem}})
        self.nginx = {"ok": problem is None, "error": problem, "at": time.time()}
        return problem

    def verify(self, site: Site, lineages: Mapping[str, Lineage]) -> str | None:
        """After a reload: does nginx serve each certificate's current version? (Not checked for
        a custom config, whose servers are the admin's.)"""
        if site.custom_config is not None:
            return None
        by_chain = {lineage.fullchain: lineage for lineage in lineages.values()}
        expected = [
            (_probe_name(server.server_names), by_chain[server.fullchain])
            for server in tls_servers(site, lineages)
        ]
        deadline = time.monotonic() + VERIFY_SECONDS
        for name, lineage in expected:
            while True:
                der = nginx.served_certificate(self.settings, name)
                if der is not None and certs.served_serial(der) == lineage.serial:
                    break
                if time.monotonic() > deadline:
                    return (
                        f"nginx does not serve the current certificate {lineage.name!r} on port "
                        f"{self.settings.https_port} after a reload (is the port free, and "
                        "may nginx listen on it?)"
                    )
                time.sleep(0.05)
        return None

    # Renewal --------------------------------------------------------------------------------

    def check_renewals(self) -> None:
        """The scheduled check: renew what is due, retry certificates that are missing."""
        error = self.renew_certificates()
        leading = self.leading()
        if leading:
            self.publish_certificates()  # also what a publication that failed left unshared
        for request in self.missing(self.site) if leading else []:
            if self._retry_due(request.name):
                obtained = self.obtain(self.site, request) is None
                error = error or self.cert_errors.get(request.name)
                if obtained:
                    self.apply_nginx(self.site)
        self.next_check = self.next_renewal_check(failed=error is not None)
        log.info(
            "next renewal check",
            extra={"fields": {"in_seconds": f"{self.next_check - time.time():.0f}"}},
        )
        self.save()

    def renew_certificates(self) -> str | None:
        """`certbot renew` (it renews what is due), then reload nginx if anything changed."""
        config_dir = self.settings.certbot_dirs[0]
        before = certs.lineages(config_dir)
        if not before or self.settings.tls_termination != "nginx" or not self.leading():
            return None  # another replica's certd renews, and shares what it renewed
        error = None
        failed: dict[str, str] = {}
        try:
            self.certbot.renew()
        except CertbotError as exc:
            error, failed = exc.reason, exc.failed
            log.error("renewal failed", extra={"fields": {"error": exc}})
        after = certs.lineages(config_dir)
        renewed = [
            n
            for n, lin in after.items()
            if n in before and lin.fingerprint != before[n].fingerprint
        ]
        for name in renewed:
            self.cert_errors.pop(name, None)
        for name, message in failed.items():
            self.cert_errors[name] = message
        if error and not failed:
            for name in after:
                self.cert_errors[name] = error
        if error is None:  # clears renewal errors, not those of a certificate still missing
            missing = {request.name for request in self.missing(self.site)}
            for name in after.keys() - missing:
                self.cert_errors.pop(name, None)
        if renewed:
            log.info("certificates renewed", extra={"fields": {"names": ",".join(renewed)}})
            self.publish_certificates()
            problem = self.apply_nginx(self.site, force_reload=True)
            for name in renewed:
                if problem:
                    self.cert_errors[name] = problem
            error = error or problem
        return error

    def next_renewal_check(self, failed: bool) -> float:
        """When to check next: the interval, or the first certificate's renewal time, or the
        retry of a missing one, whichever comes first; after a failure, not before a retry."""
        now = time.time()
        settings = self.settings
        lineages = certs.lineages(settings.certbot_dirs[0])
        due = min((lin.renewal_time().timestamp() for lin in lineages.values()), default=math.inf)
        retries = [
            self.attempts.get(request.name, now) + settings.renew_retry_seconds
            for request in self.missing(self.site)
        ]
        next_check = min(now + settings.renew_interval_seconds, due + 1.0, *retries)
        if failed or due <= now:
            next_check = max(next_check, now + settings.renew_retry_seconds)
        return max(next_check, now + 1.0)

    # Status ---------------------------------------------------------------------------------

    def certificates(self) -> list[CertificateState]:
        lineages = certs.lineages(self.settings.certbot_dirs[0])
        names = [c.name for c in self.wanted(self.site)]
        states: list[CertificateState] = []
        for name in dict.fromkeys([*names, *lineages]):
            lineage = lineages.get(name)
            wanted = next((c for c in self.wanted(self.site) if c.name == name), None)
            domains = list(lineage.domains) if lineage else list(wanted.domains if wanted else ())
            state: dict[str, Any] = {
                "name": name,
                "domains": domains,
                "notAfter": _iso(lineage.not_after) if lineage else None,
                "lastRenewal": _iso(lineage.renewed_at) if lineage else None,
                "lastError": self.cert_errors.get(name),
                "lastAttempt": self.attempts.get(name),
            }
            states.append(state)  # type: ignore[arg-type]  # lastAttempt: certd's own bookkeeping
        return states

    def default_config(self) -> str:
        """What write-default would make of the site now (the api's get-default)."""
        lineages = certs.lineages(self.settings.certbot_dirs[0])
        return render_site(self.settings, replace(self.site, custom_config=None), lineages)

    def save(self) -> None:
        certificates = self.certificates()
        alerts.announce(self.webhooks, certificates, self.settings.cert_expiry_warning_days)
        status: CertdStatus = {
            "appliedGeneration": self.applied_generation,
            "applied": self.applied,
            "nginx": self.nginx,
            "certificates": certificates,
            "reload": self.reload,
            "renew": self.renew,
            "defaultConfig": self.default_config(),
        }
        self.store.write_status(status)


def _read(path: os.PathLike[str]) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
