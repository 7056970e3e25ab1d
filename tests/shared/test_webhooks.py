"""Webhooks against a real HTTP receiver on loopback: signed, retried with backoff, at most once
per event across processes, never blocking the emitter, bounded."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.webhooks import Event, Ledger, Webhooks, parse_webhook_urls, webhooks_for
from tests.conftest import eventually, make_settings
from tests.webhook_receiver import Receiver

SECRET = "s" * 32


def down(name: str = "a") -> Event:
    return Event("upstream.down", f"upstream:{name}", "down", {"upstream": name})


def up(name: str = "a") -> Event:
    return Event("upstream.up", f"upstream:{name}", "up", {"upstream": name}, after="down")


def sender(tmp_path: Path, url: str, **options: float) -> Webhooks:
    return Webhooks((url,), SECRET, Ledger(tmp_path / "webhooks.json"), **options)  # type: ignore[arg-type]


def test_an_event_is_posted_as_json_signed_over_its_timestamp_and_body(tmp_path):
    with Receiver() as receiver:
        hooks = sender(tmp_path, receiver.url)
        event = down()
        hooks.emit(event)
        eventually(lambda: receiver.received)
        hooks.close()
    [got] = receiver.received
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-llmp-event"] == "upstream.down"
    assert got.headers["x-llmp-delivery"] == event.id
    assert got.signed_with(SECRET) and not got.signed_with("another secret")
    assert abs(int(got.headers["x-llmp-timestamp"]) - time.time()) < 60
    assert got.event == {
        "id": event.id,
        "type": "upstream.down",
        "time": got.event["time"],
        "data": {"upstream": "a"},
    }
    assert got.event["time"].endswith("Z")


def test_a_failed_delivery_is_retried_with_backoff_under_the_same_id_then_given_up(tmp_path):
    with Receiver([500, 503, 204]) as receiver:
        hooks = sender(tmp_path, receiver.url, backoff=0.05, retries=5)
        hooks.emit(down())
        eventually(lambda: hooks.delivered == 1)
        assert len({r.headers["x-llmp-delivery"] for r in receiver.received}) == 1
        assert len(receiver.received) == 3
        receiver.statuses = [500] * 10
        hooks.retries = 2
        hooks.emit(down("b"))
        eventually(lambda: hooks.dropped == 1)
        assert len(receiver.received) == 3 + 3  # the first try and two retries
        hooks.close()


def test_up_is_sent_only_after_down_and_each_transition_once(tmp_path):
    with Receiver() as receiver:
        hooks = sender(tmp_path, receiver.url)
        hooks.emit(up())  # never announced down: nothing to say
        for event in (down(), down(), up(), up(), down()):
            hooks.emit(event)
        eventually(lambda: len(receiver.received) == 3)
        hooks.close()
    assert [e["type"] for e in receiver.events()] == [
        "upstream.down",
        "upstream.up",
        "upstream.down",
    ]


def _worker(ledger: str, url: str, start: multiprocessing.synchronize.Event) -> None:
    hooks = Webhooks((url,), SECRET, Ledger(Path(ledger)))
    start.wait(30)
    hooks.emit(Event("upstream.down", "upstream:a", "down", {"upstream": "a"}))
    deadline = time.monotonic() + 30
    while hooks.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    hooks.close()


def test_workers_that_see_the_same_event_send_it_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    with Receiver() as receiver:
        workers = [
            context.Process(
                target=_worker, args=(str(tmp_path / "webhooks.json"), receiver.url, start)
            )
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        start.set()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0  # each has sent what it claimed before it exits
    assert [e["type"] for e in receiver.events()] == ["upstream.down"]


class StalledLedger(Ledger):
    """Holds the sender's thread in its first claim until released."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered, self.release = threading.Event(), threading.Event()

    def claim(self, event: Event) -> bool:
        self.entered.set()
        self.release.wait(30)
        return super().claim(event)


def test_emit_never_waits_and_a_full_queue_drops_what_does_not_fit(tmp_path):
    with Receiver() as receiver:
        ledger = StalledLedger(tmp_path / "webhooks.json")
        hooks = Webhooks((receiver.url,), SECRET, ledger, queue_limit=2)
        hooks.emit(down("a"))
        assert ledger.entered.wait(10)  # the sender is stuck on the first event
        for name in ("b", "c", "d"):
            hooks.emit(down(name))  # returns at once: nothing here waits for the sender
        assert (hooks.pending, hooks.dropped) == (2, 1)
        ledger.release.set()
        eventually(lambda: len(receiver.received) == 3)
        hooks.close()
    assert sorted(e["data"]["upstream"] for e in receiver.events()) == ["a", "b", "c"]


def test_without_urls_nothing_is_started(tmp_path):
    hooks = webhooks_for(make_settings(tmp_path))
    hooks.emit(down())
    assert hooks.pending == 0 and hooks._thread is None
    assert not (tmp_path / "data" / "webhooks.json").exists()


@pytest.mark.parametrize(
    "value",
    ["ftp://example.com/x", "http://", "example.com/hook", "http://a b/", "http://h/#frag"],
)
def test_webhook_urls_are_http_or_https_with_a_host(value):
    with pytest.raises(ValueError, match="WEBHOOK_URLS"):
        parse_webhook_urls(value)


def test_urls_without_a_secret_are_refused(tmp_path):
    assert parse_webhook_urls(" https://a.example/x , http://127.0.0.1:9/y ") == (
        "https://a.example/x",
        "http://127.0.0.1:9/y",
    )
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        make_settings(tmp_path, webhook_urls="https://a.example/x")
    settings = make_settings(tmp_path, webhook_urls="https://a.example/x", webhook_secret=SECRET)
    assert settings.webhook_urls == ("https://a.example/x",)
