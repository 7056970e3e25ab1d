"""The replica's copy of the keys in PostgreSQL (shared/pg/snapshot.py)."""

from __future__ import annotations

import pytest

from shared.apikeys import ApiKey, KeyFileError
from shared.pg import snapshot


def test_an_older_set_never_replaces_a_newer_one(tmp_path):
    path = tmp_path / "copy.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    with pytest.raises(KeyFileError, match="missing"):
        snapshot.load(path)
    assert snapshot.save(path, 5, [alice, bob])
    assert not snapshot.save(path, 4, [alice])  # a slower worker, late
    assert not snapshot.save(path, 5, [alice])
    assert snapshot.load(path) == (5, [alice, bob])
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the secrets
    assert snapshot.save(path, 6, [bob])
    assert snapshot.load(path) == (6, [bob])


def test_a_broken_copy_is_an_error_and_is_replaced(tmp_path):
    path = tmp_path / "copy.json"
    path.write_text('{"version": 3, "keys": [{"id": "x"}]}')
    with pytest.raises(KeyFileError, match="unusable"):
        snapshot.load(path)
    assert snapshot.save(path, 1, [])
    assert snapshot.load(path) == (1, [])
