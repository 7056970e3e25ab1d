"""certd's main loop: reconcile the site whenever it changes, check renewals on schedule.

The work runs in the main thread, one step at a time (see `reconcile`). Changes of the site
wake it through the site store's watch (inotify on site.json, or PostgreSQL's LISTEN), with a
cheap check of its signature as a safety net; a separate thread keeps the heartbeat in
`data/run/certd.json` (and in the store) fresh while certbot runs. SIGTERM and SIGINT stop it
between steps.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from services.certd.reconcile import Certd
from shared.heartbeat import INTERVAL, Heartbeat
from shared.logs import setup_logging
from shared.settings import get_settings

log = logging.getLogger("certd")

POLL_INTERVAL = 0.5
FAILED_STEP_PAUSE = 5.0


def _beat(certd: Certd, beat: Heartbeat, stop: threading.Event) -> None:
    while not stop.is_set():
        beat.state = certd.heartbeat_state()
        try:
            beat.beat()
        except OSError as exc:
            log.error("heartbeat not written", extra={"fields": {"error": exc}})
        stop.wait(INTERVAL)


def _beat_store(certd: Certd, stop: threading.Event) -> None:
    """Alive in the site store too (its own thread: a database away, which may take seconds
    to say so, does not delay the heartbeat file)."""
    while not stop.is_set():
        certd.store.beat()
        stop.wait(INTERVAL)


def main() -> None:
    settings = get_settings()
    setup_logging("certd", settings.log_level)
    stop, wake = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    certd = Certd(settings)
    beat = Heartbeat(settings.run_dir, "certd")
    beater = threading.Thread(
        target=_beat, args=(certd, beat, stop), name="certd-heartbeat", daemon=True
    )
    beater.start()
    store_beater = threading.Thread(
        target=_beat_store, args=(certd, stop), name="certd-store-heartbeat", daemon=True
    )
    store_beater.start()
    stop_watch = certd.store.watch(wake.set)
    log.info("started", extra={"fields": {"store": type(certd.store).__name__}})
    try:
        while not stop.is_set():
            pause = min(POLL_INTERVAL, certd.seconds_to_next_check())
            try:
                certd.step()
            except Exception:  # one bad step must not stop renewals; a later one retries
                log.exception("step failed")
                pause = FAILED_STEP_PAUSE
            wake.wait(pause)
            wake.clear()
    finally:
        stop_watch()
        certd.leader.release()
        beater.join(INTERVAL + 1)
        store_beater.join(INTERVAL + 1)
        certd.webhooks.close()
        beat.remove()
        log.info("stopped")


if __name__ == "__main__":
    main()
