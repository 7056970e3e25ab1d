"""The key file's last good copy, as every writer keeps it."""

from __future__ import annotations

import json

from shared import apikeys
from shared.apikeys import ApiKey, last_good_path, write_keys
from shared.keyfile import KeyFile


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
