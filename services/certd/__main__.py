"""certd's main loop: reconcile `data/site.json` whenever it changes, check renewals on schedule.

The work runs in the main thread, one step at a time (see `reconcile`). Changes to site.json
wake it through watchdog (inotify), with a cheap `stat()` poll as a safety net where inotify
does not reach; a separate thread keeps the heartbeat in `data/run/certd.json` fresh while
certbot runs. SIGTERM and SIGINT stop it between steps.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from services.certd.reconcile import Certd
from shared.heartbeat import INTERVAL, Heartbeat
from shared.logs import setup_logging
from shared.settings import get_settings

log = logging.getLogger("certd")

POLL_INTERVAL = 0.5
FAILED_STEP_PAUSE = 5.0


class _Wake(FileSystemEventHandler):
    def __init__(self, name: str, wake: threading.Event) -> None:
        self.name, self.wake = name, wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, getattr(event, "dest_path", ""))
        if any(os.fsdecode(p).endswith(self.name) for p in paths if p):
            self.wake.set()


def _beat(certd: Certd, beat: Heartbeat, stop: threading.Event) -> None:
    while not stop.is_set():
        beat.state = certd.heartbeat_state()
        try:
            beat.beat()
        except OSError as exc:
            log.error("heartbeat not written", extra={"fields": {"error": exc}})
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
    site_file = settings.site_file
    site_file.parent.mkdir(parents=True, exist_ok=True)
    observer = Observer()
    observer.daemon = True
    observer.schedule(_Wake(site_file.name, wake), str(site_file.parent), recursive=False)
    observer.start()
    log.info("started", extra={"fields": {"site": site_file}})
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
        observer.stop()
        observer.join(5)
        beater.join(INTERVAL + 1)
        certd.webhooks.close()
        beat.remove()
        log.info("stopped")


if __name__ == "__main__":
    main()
