import asyncio
import dataclasses
import json
import os
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from services.proxy.errors import ProxyError
from services.proxy.keys import KeyStore
from shared import status
from shared.apikeys import ApiKey, PreviousKey, format_time, read_keys, write_keys
from shared.keyfile_feed import FileKeyFeed
from tests.conftest import eventually


@asynccontextmanager
async def started(path):
    store = KeyStore(path)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


def test_keystore_follows_the_file_and_keeps_last_good_keys(tmp_path, caplog):
    path = tmp_path / "apikeys.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    write_keys(path, [alice])

    async def scenario():
        async with started(path) as store:

            def found(secret):
                policy = store.lookup(secret)
                return policy and policy.key

            assert found(alice.key) == alice and store.lookup(bob.key) is None
            write_keys(path, [alice, bob])
            await until(lambda: store.lookup(bob.key) is not None)
            write_keys(path, [bob])
            await until(lambda: store.lookup(alice.key) is None)
            path.write_text("{ not json")
            await until(lambda: store.last_error is not None)
            assert found(bob.key) == bob  # last good keys stay
            os.unlink(path)
            await until(lambda: "missing" in (store.last_error or ""))
            assert found(bob.key) == bob
            write_keys(path, [alice])
            await until(lambda: found(alice.key) == alice)
            assert store.last_error is None and store.lookup(bob.key) is None

    async def until(check):
        deadline = asyncio.get_running_loop().time() + 1.0
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "not within a second"
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert "serving the last good keys" in caplog.text


def test_keystore_stat_poll_catches_changes_inotify_misses(tmp_path):
    path = tmp_path / "apikeys.json"
    alice = ApiKey.new("alice")
    write_keys(path, [])

    async def scenario():
        feed = FileKeyFeed(path)
        store = KeyStore(feed)
        await store.start()
        feed._watch._observer.stop()  # as on a bind mount where inotify sees nothing
        try:
            version = store.version
            write_keys(path, [alice])
            for _ in range(100):
                if store.version > version:  # not lookup(), which would look again itself
                    return store.lookup(alice.key) is not None
                await asyncio.sleep(0.01)
            return False
        finally:
            await store.stop()

    assert asyncio.run(scenario())


def test_a_key_written_a_moment_ago_is_found_before_the_watch_fires(tmp_path):
    path = tmp_path / "apikeys.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    write_keys(path, [alice])

    async def scenario():
        async with started(path) as store:
            write_keys(path, [alice, bob])  # as the api does, then answers with bob's secret
            version = store.version
            found = store.lookup(bob.key)  # without yielding to the loop: no watch has run
            assert store.lookup("sk-" + "0" * 48) is None and store.version == version + 1
            return found is not None and found.key == bob

    assert asyncio.run(scenario())


def served_at_start(path, secret) -> tuple[bool, str | None]:
    async def scenario():
        async with started(path) as store:
            return store.lookup(secret) is not None, store.last_error

    return asyncio.run(scenario())


def test_a_worker_started_while_the_key_file_is_broken_serves_the_last_good_keys(tmp_path):
    path = tmp_path / "apikeys.json"
    alice = ApiKey.new("alice")
    write_keys(path, [alice])
    path.write_text('{"keys": [{"id": "half-writ')
    served, error = served_at_start(path, alice.key)
    assert served and "not valid JSON" in error
    os.unlink(path)
    served, error = served_at_start(path, alice.key)
    assert served and "missing" in error


def test_a_new_install_without_a_key_file_has_no_keys_and_no_error(tmp_path):
    assert served_at_start(tmp_path / "apikeys.json", "sk-x") == (False, None)


def test_a_valid_file_written_by_hand_becomes_the_last_good_copy(tmp_path):
    path = tmp_path / "apikeys.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    write_keys(path, [alice, bob])
    by_hand = {"keys": [bob.to_json()]}  # alice removed by an operator's edit
    path.write_text(json.dumps(by_hand))
    assert served_at_start(path, bob.key) == (True, None)
    path.write_text("{ broken")
    served, error = served_at_start(path, alice.key)
    assert not served and "not valid JSON" in error
    assert served_at_start(path, bob.key)[0]  # from the copy of the hand-written file


def test_a_proxy_started_on_a_broken_key_file_serves_its_keys_and_health_says_so(
    tmp_path, upstreams, proxy, api_key
):
    path = tmp_path / "data" / "apikeys.json"
    path.write_text("{ broken by hand")
    running = proxy(upstreams("a", ["model-a"]))
    with running.client(api_key) as client:
        r = client.post("/v1/chat/completions", json={"model": "model-a", "messages": []})
    assert r.status_code == 200
    report = eventually(
        lambda: (
            (h := status.health(running.settings))["programs"].get("proxy", {}).get("keys_error")
            and h
        )
    )
    assert report["status"] == "degraded" and not report["programs"]["proxy"]["ok"]
    assert "not valid JSON" in report["programs"]["proxy"]["keys_error"]


def test_a_rotated_keys_previous_secret_is_looked_up_until_its_time_then_refused(tmp_path):
    path = tmp_path / "apikeys.json"
    now = datetime.now(UTC)
    alice = ApiKey.new("alice")
    overlapping = alice.rotated(now + timedelta(hours=1), now=now)
    past = dataclasses.replace(
        overlapping,
        previousKeys=(PreviousKey(alice.key, format_time(now - timedelta(seconds=1))),),
    )
    store = KeyStore(path)
    write_keys(path, [overlapping])
    store.use(read_keys(path))
    old, new = store.lookup(alice.key), store.lookup(overlapping.key)
    assert old is not None and new is not None and old.key == new.key == overlapping
    old.check_key()  # accepted during the overlap, with the key's policy and limits
    assert len(store) == 1 and store.keys() == [overlapping]
    assert sorted(store.usable()) == sorted([alice.key, overlapping.key])  # not revoked
    write_keys(path, [past])
    store.use(read_keys(path))
    refused = store.lookup(alice.key)
    assert refused is not None
    with pytest.raises(ProxyError) as exc:
        refused.check_key()
    assert (exc.value.status, exc.value.code) == (401, "api_key_rotated")
    assert store.usable() == [overlapping.key]


def test_a_current_secret_wins_over_a_previous_one_of_another_key(tmp_path):
    path = tmp_path / "apikeys.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    later = datetime.now(UTC) + timedelta(hours=1)
    bob = dataclasses.replace(bob, previousKeys=(PreviousKey(alice.key, format_time(later)),))
    write_keys(path, [alice, bob])
    store = KeyStore(path)
    store.use(read_keys(path))
    found = store.lookup(alice.key)
    assert found is not None and found.key == alice and found.retired is None
