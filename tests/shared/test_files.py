import json
import os
import stat
import subprocess
import sys
import time

import pytest

from shared.apikeys import ApiKey, KeyFileError, Limits, read_keys, write_keys
from shared.files import write_atomic


def test_write_atomic_replaces_whole_file_with_mode(tmp_path):
    path = tmp_path / "sub" / "f.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["f.json"]  # no temp files left


def test_write_atomic_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    write_atomic(path, b"good")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["f"]


def test_apikeys_roundtrip_in_the_original_format(tmp_path):
    path = tmp_path / "apikeys.json"
    key = ApiKey.new("alice")
    write_keys(path, [key])
    raw = json.loads(path.read_text())
    assert raw == {
        "keys": [{"id": key.id, "username": "alice", "key": key.key, "createdAt": key.createdAt}]
    }
    assert len(key.id) == 32 and key.key.startswith("sk-") and len(key.key) == 67
    assert key.createdAt.endswith("Z")
    assert read_keys(path) == [key]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_apikeys_missing_file_is_no_keys(tmp_path):
    assert read_keys(tmp_path / "none.json") == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"keys": {}}',
        b'{"keys": [1]}',
        b'{"keys": [{"id": "x", "username": "u"}]}',
        b"\xff",
    ],
)
def test_apikeys_corrupt_file_is_an_error_not_an_empty_set(tmp_path, content):
    path = tmp_path / "apikeys.json"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        read_keys(path)


def test_apikey_updated_merges_limits_and_refuses_what_the_file_could_not_hold():
    key = ApiKey.new("alice").updated({"limits": {"requestsPerMinute": 5, "maxConcurrent": 2}})
    changed = key.updated({"enabled": False, "limits": {"maxConcurrent": None}})
    assert changed.limits == Limits(requestsPerMinute=5)
    assert (changed.enabled, changed.models, changed.expiresAt) == (False, None, None)
    assert key.updated({}) == key
    with pytest.raises(ValueError, match=r"limits\.tokensPerDay"):
        key.updated({"limits": {"tokensPerDay": 0}})
    with pytest.raises(ValueError, match="models"):
        key.updated({"models": ("",)})


def test_temporary_files_of_a_killed_writer_are_removed_at_the_next_write(tmp_path):
    path = tmp_path / "apikeys.json"
    code = (
        "import os, sys, tempfile\n"
        "fd, tmp = tempfile.mkstemp(dir=sys.argv[1], prefix='.apikeys.json.', suffix='.tmp')\n"
        "os.write(fd, b'{\"keys\": [...every key...]}')\n"
        "os.kill(os.getpid(), 9)\n"  # killed midway, as write_atomic would be
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=30)
    (left,) = tmp_path.glob(".apikeys.json.*.tmp")
    old = time.time() - 120
    os.utime(left, (old, old))
    young = tmp_path / ".apikeys.json.writing.tmp"  # another writer's, at work now
    young.write_bytes(b"{}")
    other = tmp_path / ".site.json.x.tmp"
    other.write_bytes(b"{}")
    os.utime(other, (old, old))
    write_atomic(path, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["apikeys.json", young.name, other.name]
    )
