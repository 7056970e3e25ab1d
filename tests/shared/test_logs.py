import io
import logging

from shared import logs
from tests.conftest import eventually


def test_lines_are_batched_and_warnings_go_out_at_once_in_order():
    stream = io.StringIO()
    handler = logs._Handler(stream)
    handler.setFormatter(logs._Formatter("proxy"))
    log = logging.getLogger("test.batching")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("request", extra={"fields": {"id": "a1", "model": None, "note": "two words"}})
        assert stream.getvalue() == ""  # waiting for the batch
        log.warning("upstream down")
        lines = stream.getvalue().splitlines()
        assert [line.split(" ", 3)[1:3] for line in lines] == [
            ["INFO", "proxy"],
            ["WARNING", "proxy"],
        ]
        assert lines[0].endswith('request id=a1 note="two words"')  # None left out
        log.info("later")
        eventually(lambda: "later" in stream.getvalue())  # flushed by the background thread
    finally:
        log.removeHandler(handler)
        handler.close()


def test_event_writes_the_line_log_info_would_and_goes_through_logging_when_watched(caplog):
    stream = io.StringIO()
    handler = logs._Handler(stream)
    handler.setFormatter(logs._Formatter("proxy"))
    log = logging.getLogger("test.event")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    fields = {"id": "a1", "model": None, "note": "two words", "empty": "", "n": 3}
    try:
        log.info("request", extra={"fields": fields})
        logs.event(log, "request", fields)
        handler.flush()
        by_info, by_event = stream.getvalue().splitlines()
        # The same but for the time: `2026-12-03T16:43:50.123Z INFO proxy request ...`.
        assert by_event.split(" ", 1)[1] == by_info.split(" ", 1)[1]
        assert by_event.endswith('request id=a1 note="two words" empty="" n=3')
        assert len(by_event.split(" ", 1)[0]) == len("2026-12-03T16:43:50.123Z")

        log.setLevel(logging.WARNING)
        logs.event(log, "request", fields)  # below the level: nothing
        log.setLevel(logging.INFO)
        log.addHandler(caplog.handler)  # another handler on the way: logging delivers it
        logs.event(log, "request", fields)
        handler.flush()
        assert [r.getMessage() for r in caplog.records] == ["request"]
        assert caplog.records[0].fields == fields
        assert len(stream.getvalue().splitlines()) == 3
    finally:
        log.removeHandler(caplog.handler)
        log.removeHandler(handler)
        handler.close()
