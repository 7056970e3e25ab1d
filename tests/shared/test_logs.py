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
