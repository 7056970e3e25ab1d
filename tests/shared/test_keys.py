"""The keys in PostgreSQL (shared/pg/keys.py): what the conformance suite (test_keystore.py)
cannot show, because only a database can be stopped, killed or edited by hand."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from shared.apikeys import ApiKey
from shared.pg.keys import FEED_NAME, KeyStoreUnavailable, PgKeyAdmin, PgKeyFeed
from tests.postgres import Cluster
from tests.shared.test_keystore import until


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, which it may stop."""
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.remove()


def test_a_feed_serves_its_last_keys_while_the_database_is_down_then_catches_up(own_cluster):
    url = own_cluster.new_database()
    admin = PgKeyAdmin(url)
    alice = admin.create("alice")

    async def scenario() -> None:
        feed = PgKeyFeed(url, None, check_interval=0.5)
        sets: list[list[ApiKey]] = []
        await feed.start(sets.append)
        try:
            await asyncio.to_thread(own_cluster.stop)
            await until(lambda: feed.last_error is not None)
            assert sets == [[alice]]  # nothing taken away
            await until(lambda: feed.staleness() > 0.2)
            with pytest.raises(KeyStoreUnavailable):
                await asyncio.to_thread(admin.list)
            await asyncio.to_thread(own_cluster.start)
            await asyncio.to_thread(admin.update, alice.id, {"enabled": False})
            await until(lambda: feed.last_error is None and not sets[-1][0].enabled, within=15)
            assert feed.staleness() == 0.0
        finally:
            await feed.stop()

    asyncio.run(scenario())


def test_a_worker_started_while_the_database_is_down_serves_keys_once_it_is_back(own_cluster):
    url = own_cluster.new_database()
    alice = PgKeyAdmin(url).create("alice")
    own_cluster.stop()

    async def scenario() -> None:
        feed = PgKeyFeed(url, None, check_interval=0.5)
        sets: list[list[ApiKey]] = []
        await feed.start(sets.append)  # does not wait for the database
        try:
            assert sets == [] and "key database" in (feed.last_error or "")
            await asyncio.to_thread(own_cluster.start)
            await until(lambda: sets == [[alice]], within=15)
        finally:
            await feed.stop()

    asyncio.run(scenario())


def test_a_worker_started_while_the_database_is_down_serves_the_replicas_copy(
    own_cluster, tmp_path
):
    url = own_cluster.new_database()
    admin = PgKeyAdmin(url)
    alice, bob = admin.create("alice"), admin.create("bob")
    copy = tmp_path / "apikeys.pg-snapshot.json"

    async def run_feed(then) -> list[list[ApiKey]]:
        feed = PgKeyFeed(url, copy, check_interval=0.5)
        sets: list[list[ApiKey]] = []
        await feed.start(sets.append)
        try:
            await then(feed, sets)
        finally:
            await feed.stop()
        return sets

    async def delete_bob(feed, sets) -> None:
        await asyncio.to_thread(admin.delete, bob.id)
        await until(lambda: sets[-1] == [alice])

    async def check_copy(feed, sets) -> None:
        assert sets == [[alice]] and feed.last_error is not None
        assert feed.staleness() > 0

    asyncio.run(run_feed(delete_bob))
    own_cluster.stop()
    asyncio.run(run_feed(check_copy))


def test_a_feed_whose_connection_was_killed_connects_again_and_misses_no_change(postgres):
    url = postgres.new_database()
    admin = PgKeyAdmin(url)
    alice = admin.create("alice")

    async def scenario() -> None:
        feed = PgKeyFeed(url, None, check_interval=60)  # the version check cannot stand in
        sets: list[list[ApiKey]] = []
        await feed.start(sets.append)
        try:
            assert await asyncio.to_thread(postgres.terminate, FEED_NAME) >= 1
            await asyncio.to_thread(admin.delete, alice.id)  # maybe before it listens again
            await until(lambda: sets[-1] == [])
        finally:
            await feed.stop()

    asyncio.run(scenario())


def test_a_key_broken_by_hand_in_the_database_leaves_the_last_keys_in_force(database_url):
    admin = PgKeyAdmin(database_url)
    alice = admin.create("alice")

    async def scenario() -> None:
        feed = PgKeyFeed(database_url, None, check_interval=0.5)
        sets: list[list[ApiKey]] = []
        await feed.start(sets.append)
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE llmp_keys SET doc = doc - 'username'")
            await until(lambda: feed.last_error is not None)
            assert sets == [[alice]] and "username" in feed.last_error
            with pytest.raises(KeyStoreUnavailable):
                admin.list()
        finally:
            await feed.stop()

    asyncio.run(scenario())
