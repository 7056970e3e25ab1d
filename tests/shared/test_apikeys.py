"""`data/apikeys.json`'s format: the original's files load, the new optional fields (name, owner,
note, previous secrets) round-trip and are left out when unset, and rotation keeps a previous
secret exactly as long as asked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.apikeys import ApiKey, KeyFileError, PreviousKey, format_time, read_keys, write_keys

ORIGINAL = {
    "keys": [
        {
            "id": "0123456789abcdef0123456789abcdef",
            "username": "alice",
            "key": "sk-" + "a" * 64,
            "createdAt": "2025-01-02T03:04:05.678Z",
        }
    ]
}
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_the_originals_file_loads_and_is_written_back_byte_for_byte(tmp_path):
    path = tmp_path / "apikeys.json"
    original = json.dumps(ORIGINAL, indent=2) + "\n"  # JSON.stringify(..., 2) and a newline
    path.write_text(original)
    keys = read_keys(path)
    assert keys[0].name is None and keys[0].previousKeys == ()
    write_keys(path, keys)
    assert path.read_text() == original


def test_named_owned_noted_and_rotated_keys_round_trip_with_the_originals_fields_first(tmp_path):
    key = ApiKey.new("alice").updated({"name": "ci", "owner": "ops@example.com", "note": "evals"})
    rotated = key.rotated(NOW + timedelta(hours=1), now=NOW)
    path = tmp_path / "apikeys.json"
    write_keys(path, [rotated])
    saved = json.loads(path.read_text())["keys"][0]
    assert list(saved)[:4] == ["id", "username", "key", "createdAt"]  # the original reads these
    assert saved["name"] == "ci" and saved["owner"] == "ops@example.com"
    assert saved["note"] == "evals"
    assert saved["previousKeys"] == [{"key": key.key, "until": "2026-05-01T13:00:00.000Z"}]
    assert read_keys(path) == [rotated]


def test_rotation_gives_a_new_secret_and_accepts_the_old_one_until_its_time_only():
    key = ApiKey.new("alice")
    until = NOW + timedelta(minutes=10)
    rotated = key.rotated(until, now=NOW)
    assert rotated.key != key.key and rotated.id == key.id
    assert rotated.accepts(rotated.key, NOW)
    assert rotated.accepts(key.key, NOW + timedelta(minutes=9, seconds=59))
    assert not rotated.accepts(key.key, until)  # refused from `until` on
    assert not rotated.accepts("sk-" + "0" * 64, NOW)


def test_a_rotation_ends_earlier_secrets_no_later_than_its_own_and_prunes_spent_ones():
    key = ApiKey.new("alice")
    first = key.rotated(NOW + timedelta(hours=5), now=NOW)
    second = first.rotated(NOW + timedelta(hours=1), now=NOW)
    assert second.previousKeys == (
        PreviousKey(key.key, "2026-05-01T13:00:00.000Z"),  # cut from 17:00 to 13:00
        PreviousKey(first.key, "2026-05-01T13:00:00.000Z"),
    )
    third = second.rotated(NOW, now=NOW + timedelta(minutes=1))  # no overlap, after a leak
    assert third.previousKeys == ()
    assert not any(third.accepts(k.key, NOW + timedelta(minutes=1)) for k in (key, first, second))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", 3),
        ("owner", ["x"]),
        ("previousKeys", {"key": "sk-x"}),
        ("previousKeys", [{"key": "sk-x"}]),
        ("previousKeys", [{"key": "sk-x", "until": "soon"}]),
        ("previousKeys", [{"key": "", "until": "2026-01-01T00:00:00Z"}]),
        ("previousKeys", [{"key": "sk-x", "until": "2026-01-01T00:00:00Z", "x": 1}]),
    ],
)
def test_a_new_field_of_the_wrong_shape_is_a_key_file_error(tmp_path, field, value):
    path = tmp_path / "apikeys.json"
    path.write_text(json.dumps({"keys": [{**ORIGINAL["keys"][0], field: value}]}))
    with pytest.raises(KeyFileError, match=r"keys\[0\]"):
        read_keys(path)


def test_a_previous_key_is_accepted_strictly_before_its_until():
    previous = PreviousKey("sk-x", format_time(NOW))
    assert previous.accepted(NOW - timedelta(milliseconds=1))
    assert not previous.accepted(NOW)
