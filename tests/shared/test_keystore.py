"""The key store's conformance suite: every case runs against each implementation of
`shared.keystore` (the key file, and PostgreSQL in a throwaway cluster)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.apikeys import ApiKey, Limits
from shared.keyfile import KeyFile
from shared.keyfile_feed import FileKeyFeed
from shared.keystore import DuplicateUsername, KeyAdmin, KeyFeed


@pytest.fixture(params=["file", "postgres"])
def store(request, tmp_path):
    """(a KeyAdmin, a function making a new KeyFeed on the same keys)"""
    if request.param == "file":
        path = tmp_path / "apikeys.json"
        return KeyFile(path), lambda: FileKeyFeed(path)
    from shared.pg.keys import PgKeyAdmin, PgKeyFeed

    url = request.getfixturevalue("database_url")
    return PgKeyAdmin(url), lambda: PgKeyFeed(url, tmp_path / "copy.json", check_interval=0.5)


def test_keys_are_created_listed_found_changed_and_deleted(store):
    admin: KeyAdmin = store[0]
    admin.prepare()
    assert admin.list() == []
    alice, bob = admin.create("alice"), admin.create("bob", {"enabled": False})
    assert admin.list() == [alice, bob]  # in the order they were made
    assert not bob.enabled and alice.key.startswith("sk-") and alice.key != bob.key
    with pytest.raises(DuplicateUsername):
        admin.create("alice")
    assert admin.find(alice.key) == alice
    assert admin.find(alice.key[:-1] + "0" if alice.key[-1] != "0" else "1") is None
    assert admin.by_id_or_secret(bob.id) == bob == admin.by_id_or_secret(bob.key)
    assert admin.by_id_or_secret("nothing") is None

    changed = admin.update(alice.id, {"models": ("llama*",), "limits": {"requestsPerMinute": 5}})
    assert changed is not None
    assert changed.models == ("llama*",) and changed.limits == Limits(requestsPerMinute=5)
    assert admin.list() == [changed, bob]
    assert admin.update("no-such-id", {"enabled": False}) is None
    with pytest.raises(ValueError):
        admin.update(alice.id, {"expiresAt": "not a time"})
    assert admin.list() == [changed, bob]  # a refused change changes nothing

    assert admin.delete(bob.id) and not admin.delete(bob.id)
    assert admin.list() == [changed] and admin.find(bob.key) is None


def test_a_user_has_named_keys_and_a_rotated_secret_is_found_until_its_time(store):
    admin: KeyAdmin = store[0]
    admin.prepare()
    first = admin.create("alice")
    ci = admin.create("alice", {"name": "ci", "owner": "platform", "note": "the build"})
    with pytest.raises(DuplicateUsername) as taken:
        admin.create("alice", {"name": "ci"})
    assert 'named "ci"' in taken.value.message
    with pytest.raises(DuplicateUsername):
        admin.update(first.id, {"name": "ci"})
    assert admin.list() == [first, ci]

    rotated = admin.rotate(ci.id, datetime.now(UTC) + timedelta(hours=1))
    assert rotated is not None and rotated.key != ci.key and rotated.id == ci.id
    assert admin.find(rotated.key) == rotated == admin.find(ci.key)  # the overlap
    assert admin.by_id_or_secret(ci.key) == rotated
    again = admin.rotate(ci.id, datetime.now(UTC) - timedelta(seconds=1))  # after a leak
    assert again is not None
    assert admin.find(again.key) == again
    assert admin.find(ci.key) is None and admin.find(rotated.key) is None
    assert admin.rotate("no-such-id", datetime.now(UTC)) is None


def test_changes_from_several_writers_at_once_are_all_kept(store):
    admin: KeyAdmin = store[0]
    admin.prepare()
    errors: list[BaseException] = []

    def create(worker: int) -> None:
        try:
            for n in range(5):
                admin.create(f"user-{worker}-{n}")
            with pytest.raises(DuplicateUsername):
                admin.create("shared-name") if worker else admin.create("user-0-0")
        except BaseException as exc:
            errors.append(exc)

    admin.create("shared-name")
    threads = [threading.Thread(target=create, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    names = sorted(k.username for k in admin.list())
    assert names == sorted(["shared-name"] + [f"user-{w}-{n}" for w in range(4) for n in range(5)])


def test_a_feed_hands_over_the_keys_then_every_change_with_a_higher_version(store):
    admin: KeyAdmin = store[0]
    admin.prepare()
    alice = admin.create("alice")

    async def scenario() -> None:
        feed: KeyFeed = store[1]()
        sets: list[list[ApiKey]] = []
        await feed.start(sets.append)
        try:
            assert sets == [[alice]] and feed.version > 0
            assert feed.last_error is None and feed.staleness() == 0.0
            seen = feed.version
            await asyncio.to_thread(admin.update, alice.id, {"enabled": False})
            await until(lambda: len(sets) == 2)
            assert [k.enabled for k in sets[-1]] == [False] and feed.version > seen
            bob = await asyncio.to_thread(admin.create, "bob")
            await until(lambda: len(sets) == 3)
            await asyncio.to_thread(admin.delete, alice.id)
            await until(lambda: sets[-1] == [bob])
        finally:
            await feed.stop()

    asyncio.run(scenario())


async def until(check, within: float = 5.0) -> None:
    """Wait for `check`, within a bound generous for a loaded machine (the tight bounds are
    measured in tests/stack/test_replicas.py)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within}s"
        await asyncio.sleep(0.01)
