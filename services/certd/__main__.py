"""certd's main loop: apply the nginx configuration at start, then keep a heartbeat.

Reports what it observed in `data/certd/status.json` and its heartbeat in `data/run/certd.json`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from services.certd import nginx
from shared.files import write_json_atomic
from shared.heartbeat import INTERVAL, Heartbeat
from shared.logs import setup_logging
from shared.settings import Settings, get_settings

log = logging.getLogger("certd")


def apply_nginx(settings: Settings, beat: Heartbeat) -> None:
    try:
        applied = nginx.apply(settings)
    except nginx.NginxError as exc:
        log.error("nginx config refused", extra={"fields": {"error": str(exc)}})
        beat.state["nginx"] = {"ok": False, "error": str(exc), "at": time.time()}
    else:
        log.info(
            "nginx config applied",
            extra={"fields": {"changed": applied.changed, "reloaded": applied.reloaded}},
        )
        beat.state["nginx"] = {"ok": True, "error": None, "at": time.time()}
    write_json_atomic(
        settings.data_dir / "certd" / "status.json",
        {"generation": 0, "nginx": beat.state["nginx"], "certificates": []},
        mode=0o644,
    )


def main() -> None:
    settings = get_settings()
    setup_logging("certd", settings.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    beat = Heartbeat(settings.run_dir, "certd")
    apply_nginx(settings, beat)
    while not stop.is_set():
        beat.beat()
        stop.wait(INTERVAL)
    beat.remove()
    log.info("stopped")


if __name__ == "__main__":
    main()
