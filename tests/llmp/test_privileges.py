"""llmp/privileges.py: root-owned files of the original become the user's, then llmp is that
user. Needs root (as the container's start has it) and the system's `nobody`."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmp import privileges

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="taking ownership needs root")


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's own temp folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="llmp-privileges-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


def test_take_ownership_then_become(world, monkeypatch):
    nobody = pwd.getpwnam("nobody")
    data, certs, outside = world / "data", world / "certs", world / "outside"
    (data / "analytics").mkdir(parents=True)
    (data / "apikeys.json").write_text('{"keys": []}\n')
    (data / "apikeys.json").chmod(0o600)
    (certs / "archive" / "x").mkdir(parents=True)
    (certs / "live" / "x").mkdir(parents=True)
    (certs / "archive" / "x" / "privkey1.pem").write_text("key")
    (certs / "archive" / "x" / "privkey1.pem").chmod(0o600)
    (certs / "live" / "x" / "privkey.pem").symlink_to("../../archive/x/privkey1.pem")
    outside.write_text("not ours")
    (data / "link-out").symlink_to(outside)
    env = world / "env"
    env.write_text("PORT=8080\n")
    env.chmod(0o600)

    changed = privileges.take_ownership(
        [data, certs, env, world / "missing"], nobody.pw_uid, nobody.pw_gid
    )

    assert changed == 12
    for path in (data / "apikeys.json", certs / "archive" / "x" / "privkey1.pem", env):
        assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert os.lstat(data / "link-out").st_uid == nobody.pw_uid
    assert outside.stat().st_uid == 0  # links are not followed out of the folders
    assert privileges.take_ownership([data, certs, env], nobody.pw_uid, nobody.pw_gid) == 0

    monkeypatch.setenv("LLMP_USER", "nobody")
    user = privileges.target()
    assert user is not None and user.pw_uid == nobody.pw_uid
    output = world / "stdout"  # stands for the pipe Docker gives PID 1, root's
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through its exit status)
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            privileges.become(user)
            (certs / "live" / "x" / "privkey.pem").read_text()
            (data / "analytics.db").write_text("")
            with open("/dev/stdout", "w") as again:  # as supervisord opens it for a program
                again.write("ok\n")
            ok = os.getuid() == nobody.pw_uid and os.getgroups() in ([], [nobody.pw_gid])
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert output.read_text() == "ok\n"


def test_target_user(monkeypatch):
    monkeypatch.delenv("LLMP_USER", raising=False)
    assert privileges.target() is None  # `make run`: nothing changes
    monkeypatch.setenv("LLMP_USER", "no-such-user-here")
    with pytest.raises(SystemExit):
        privileges.target()
