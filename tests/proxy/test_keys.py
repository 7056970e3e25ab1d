import asyncio
import os

from services.proxy.keys import KeyStore
from shared.apikeys import ApiKey, write_keys


def test_keystore_follows_the_file_and_keeps_last_good_keys(tmp_path, caplog):
    path = tmp_path / "apikeys.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    write_keys(path, [alice])

    async def scenario():
        store = KeyStore(path)
        await store.start()

        def found(secret):
            policy = store.lookup(secret)
            return policy and policy.key

        try:
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
        finally:
            await store.stop()

    async def until(check):
        deadline = asyncio.get_running_loop().time() + 1.0
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "not within a second"
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert "keeping the last good keys" in caplog.text


def test_keystore_stat_poll_catches_changes_inotify_misses(tmp_path):
    path = tmp_path / "apikeys.json"
    alice = ApiKey.new("alice")
    write_keys(path, [])

    async def scenario():
        store = KeyStore(path)
        await store.start()
        store._observer.stop()  # as on a bind mount where inotify sees nothing
        try:
            write_keys(path, [alice])
            for _ in range(100):
                if store.lookup(alice.key):
                    return True
                await asyncio.sleep(0.01)
            return False
        finally:
            await store.stop()

    assert asyncio.run(scenario())
