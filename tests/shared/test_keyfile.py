"""Changing the key file: several named keys per user, rotation, and the last good copy as every
writer keeps it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared import apikeys
from shared.apikeys import ApiKey, last_good_path, write_keys
from shared.keyfile import DuplicateUsername, KeyFile


def test_a_copy_that_cannot_be_refreshed_is_removed_never_left_stale(tmp_path, monkeypatch):
    path = tmp_path / "apikeys.json"
    alice, bob = ApiKey.new("alice"), ApiKey.new("bob")
    write_keys(path, [alice, bob])
    # An operator's edit revokes bob; the copy still holds him until a reader refreshes it.
    path.write_text(json.dumps({"keys": [alice.to_json()]}))

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(apikeys, "write_atomic", full_disk)
    assert KeyFile(path).remember() is False
    assert not last_good_path(path).exists()  # a stale copy could bring bob back
    monkeypatch.undo()
    assert KeyFile(path).remember() is True
    assert json.loads(last_good_path(path).read_text())["keys"] == [alice.to_json()]


def test_an_unchanged_file_is_not_copied_again(tmp_path):
    path = tmp_path / "apikeys.json"
    write_keys(path, [ApiKey.new("alice")])
    assert KeyFile(path).remember() is False


def test_a_user_holds_several_keys_told_apart_by_name(tmp_path):
    keyfile = KeyFile(tmp_path / "apikeys.json")
    first = keyfile.create("alice")
    ci = keyfile.create("alice", {"name": "ci"})
    with pytest.raises(DuplicateUsername) as unnamed:
        keyfile.create("alice")
    assert unnamed.value.message == "API key already exists for this username"
    with pytest.raises(DuplicateUsername) as named:
        keyfile.create("alice", {"name": "ci"})
    assert named.value.message == 'An API key named "ci" already exists for this username'
    assert keyfile.create("bob", {"name": "ci"}).name == "ci"  # names are per user
    with pytest.raises(DuplicateUsername):
        keyfile.update(first.id, {"name": "ci"})  # renaming onto another key's name
    assert [k.id for k in keyfile.list() if k.username == "alice"] == [first.id, ci.id]


def test_rotation_is_saved_and_find_accepts_the_old_secret_only_during_the_overlap(tmp_path):
    keyfile = KeyFile(tmp_path / "apikeys.json")
    key = keyfile.create("alice")
    rotated = keyfile.rotate(key.id, datetime.now(UTC) + timedelta(hours=1))
    assert rotated is not None and keyfile.list() == [rotated]
    assert keyfile.find(key.key) == rotated and keyfile.find(rotated.key) == rotated
    keyfile.rotate(key.id, datetime.now(UTC))  # no overlap: both older secrets refused
    assert keyfile.find(key.key) is None and keyfile.find(rotated.key) is None
    assert keyfile.by_id_or_secret(rotated.key) is None
    assert keyfile.rotate("0" * 32, datetime.now(UTC)) is None


def test_a_hand_edited_file_with_two_unnamed_keys_of_a_user_can_still_change_either(tmp_path):
    path = tmp_path / "apikeys.json"
    first, second = ApiKey.new("alice"), ApiKey.new("alice")
    write_keys(path, [first, second])
    keyfile = KeyFile(path)
    assert keyfile.update(second.id, {"enabled": False}) is not None
    assert keyfile.rotate(first.id, datetime.now(UTC)) is not None
    with pytest.raises(DuplicateUsername):
        keyfile.update(second.id, {"name": None})  # naming it so is still refused
    assert keyfile.update(second.id, {"name": "old"}) is not None
