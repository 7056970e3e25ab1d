"""`llmp keys`: a key's policy by hand, with the api's rules and messages (in process)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmp.__main__ import main
from shared.apikeys import ApiKey, Limits, read_keys, write_keys


@pytest.fixture
def llmp(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    env_file = tmp_path / "env"
    env_file.write_text(f"DATA_DIR={tmp_path / 'data'}\n")

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as ended:
            main(["--env-file", str(env_file), *args])
        out, err = capsys.readouterr()
        return int(ended.value.code or 0), out, err

    return run


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "apikeys.json"


@pytest.fixture
def alice(path: Path) -> ApiKey:
    key = ApiKey.new("alice")
    write_keys(path, [key, ApiKey.new("bob")])
    return key


def test_set_changes_the_policy_and_list_shows_it(llmp, path, alice):
    code, out, _ = llmp(
        "keys", "set", "alice", "--disable", "--expires", "2099-01-01T00:00:00+01:00",
        "--models", "llama3*, qwen*", "--rpm", "60", "--tpm", "1000", "--tpd", "50000",
        "--concurrency", "2",
    )  # fmt: skip
    assert code == 0 and out.startswith(f"updated {alice.id} (alice): disabled")
    saved = read_keys(path)[0]
    assert (saved.enabled, saved.expiresAt, saved.models) == (
        False,
        "2098-12-31T23:00:00.000Z",
        ("llama3*", "qwen*"),
    )
    assert saved.limits == Limits(60, 1000, 50000, 2)
    code, out, _ = llmp("keys", "list")
    alice_line, bob_line = out.splitlines()
    assert alice_line == (
        f"{alice.id}  {alice.createdAt}  alice  disabled, expires 2098-12-31T23:00:00.000Z  "
        "models: llama3*, qwen*  limits: 60 requests/min, 1000 tokens/min, 50000 tokens/day, "
        "2 concurrent requests"
    )
    assert bob_line.endswith("  bob  enabled  models: all  limits: none")
    assert alice.key not in out  # the secret is shown once only, at creation


def test_zero_none_never_and_all_remove_what_was_set(llmp, path, alice):
    llmp("keys", "set", alice.id, "--disable", "--expires", "2099-01-01", "--models", "a*")
    llmp("keys", "set", alice.id, "--rpm", "5", "--tpd", "9", "--concurrency", "1")
    code, out, _ = llmp(
        "keys", "set", alice.key, "--enable", "--expires", "never", "--models", "all",
        "--rpm", "0", "--tpd", "none",
    )  # fmt: skip
    assert code == 0
    assert read_keys(path)[0] == ApiKey(
        alice.id, "alice", alice.key, alice.createdAt, limits=Limits(maxConcurrent=1)
    )
    assert "enabled  models: all  limits: 1 concurrent requests" in out


def test_list_says_when_a_key_has_expired(llmp, path, alice):
    write_keys(path, [dataclasses.replace(alice, expiresAt="2020-01-01T00:00:00.000Z")])
    assert "alice  enabled, expired 2020-01-01T00:00:00.000Z  " in llmp("keys", "list")[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rpm", "-1"], '"limits.requestsPerMinute" must be a positive number'),
        (["--tpm", "lots"], '"limits.tokensPerMinute" must be a number'),
        (["--expires", "soon"], '"expiresAt" must be in ISO 8601 date format'),
        (["--expires", "2020-01-01"], '"expiresAt" must be greater than "now"'),
        (
            ["--models", "a,,a", "--concurrency", "1.5"],
            '"models[1]" is not allowed to be empty, "models[2]" contains a duplicate value, '
            '"limits.maxConcurrent" must be a number',
        ),
        ([], "nothing to change: give --enable, --disable, --expires, --models, --rpm, --tpm, "
         "--tpd or --concurrency"),
    ],
)  # fmt: skip
def test_set_refuses_bad_values_in_the_apis_words(llmp, path, alice, options, message):
    before = path.read_bytes()
    code, _, err = llmp("keys", "set", "alice", *options)
    assert (code, err) == (2, f"llmp: {message}\n")
    assert path.read_bytes() == before


def test_set_of_an_unknown_key_fails(llmp, path, alice):
    before = path.read_bytes()
    assert llmp("keys", "set", "carol", "--disable") == (1, "", "llmp: no key 'carol'\n")
    assert path.read_bytes() == before


def test_enable_and_disable_together_are_refused(llmp, path, alice):
    code, _, err = llmp("keys", "set", "alice", "--enable", "--disable")
    assert code == 2 and "not allowed with argument" in err
    assert read_keys(path)[0].enabled is True


def test_a_users_further_key_is_created_with_a_name_and_a_username_of_several_is_ambiguous(
    llmp, path, alice
):
    assert llmp("keys", "create", "alice") == (
        1,
        "",
        "llmp: alice already has a key: give --name\n",
    )
    code, out, _ = llmp("keys", "create", "alice", "--name", "ci")
    assert code == 0 and out.startswith("sk-")
    ci = read_keys(path)[-1]
    assert (ci.username, ci.name, ci.key) == ("alice", "ci", out.strip())
    code, _, err = llmp("keys", "create", "alice", "--name", "bad name")
    assert code == 2 and '"name" must start with a letter or digit' in err
    assert f"{ci.id}  {ci.createdAt}  alice (ci)  " in llmp("keys", "list")[1]
    before = path.read_bytes()
    assert llmp("keys", "set", "alice", "--disable") == (
        2,
        "",
        "llmp: alice has 2 keys: give the key's id\n",
    )
    assert path.read_bytes() == before
    assert llmp("keys", "set", ci.id, "--disable")[0] == 0
    assert [k.enabled for k in read_keys(path)] == [True, True, False]


def test_rotate_prints_the_new_secret_and_keeps_the_old_one_only_until_asked(llmp, path, alice):
    code, out, _ = llmp("keys", "rotate", alice.id, "--until", "2026-01-01T00:00:00Z")
    rotated = read_keys(path)[0]
    assert code == 0 and out.strip() == rotated.key != alice.key
    assert rotated.previousKeys == ()  # its time had passed: refused at once
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    code, out, _ = llmp("keys", "rotate", "alice", "--until", later)
    again = read_keys(path)[0]
    assert code == 0 and [p.key for p in again.previousKeys] == [rotated.key]
    assert llmp("keys", "rotate", "alice", "--until", "soon") == (
        2,
        "",
        'llmp: "until" must be in ISO 8601 date format\n',
    )
    assert llmp("keys", "rotate", "carol")[0] == 1
