"""Who llmp runs as: in the container, the unprivileged `LLMP_USER`, never root.

The image starts as root for one reason: the original llm-proxy ran as root, so what an
upgrader mounts (data/, the nginx config folder, the certificates, `.env`, the Cloudflare
credentials) belongs to root, private keys and secrets with mode 0600. `llmp run` started as
root with LLMP_USER set first gives these to that user (`take_ownership`, only what is not
theirs yet, symbolic links not followed), then every llmp command switches to the user for
good (`become`) before it does anything else: supervisord and the four programs never run as
root. Started as another user, or without LLMP_USER (`make run`), nothing changes.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from shared.settings import Settings


def target() -> pwd.struct_passwd | None:
    """The user to become: LLMP_USER, if set and we are root."""
    name = os.environ.get("LLMP_USER", "")
    if not name or os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        print(f"llmp: LLMP_USER={name!r} is not a user of this system", file=sys.stderr)
        raise SystemExit(2) from None


def hand_over(settings: Settings, env_file: Path, user: pwd.struct_passwd) -> int:
    """Make the folders the programs write (their parents may be root's) and give them, with
    the secrets the programs read, to `user`; returns how many entries changed owner."""
    folders = [
        settings.data_dir,
        settings.state_dir,
        settings.nginx_conf_dir,
        settings.letsencrypt_dir,
    ]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    secrets = [settings.cloudflare_credentials, env_file]
    return take_ownership([*folders, *secrets], user.pw_uid, user.pw_gid)


def _tree(path: Path) -> Iterator[str]:
    yield str(path)
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                yield os.path.join(folder, name)


def take_ownership(paths: Iterable[Path], uid: int, gid: int) -> int:
    """Give `paths` (folders with all they hold) to uid:gid; returns how many entries changed.

    A path that cannot change (a read-only mount) is reported and left as it is."""
    changed = 0
    for path in paths:
        if not os.path.lexists(path):
            continue
        try:
            for entry in _tree(path):
                st = os.lstat(entry)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(entry, uid, gid)
                    changed += 1
        except OSError as exc:
            print(f"llmp: cannot take ownership of {path}: {exc}", file=sys.stderr)
    return changed


def _give_stdio(uid: int) -> None:
    """Give stdin, stdout and stderr to `uid`, as runc does for a container's USER: supervisord
    opens /dev/stdout again for each program's output, and the pipe Docker made is root's.
    (/dev/null is left alone; what cannot change owner is left as it is.)"""
    null = os.stat(os.devnull).st_rdev
    for fd in (0, 1, 2):
        try:
            st = os.fstat(fd)
            if st.st_uid != uid and not (stat.S_ISCHR(st.st_mode) and st.st_rdev == null):
                os.fchown(fd, uid, -1)
        except OSError:
            continue


def become(user: pwd.struct_passwd) -> None:
    """Switch this process (and what it execs) to `user`, groups included, for good."""
    _give_stdio(user.pw_uid)
    os.initgroups(user.pw_name, user.pw_gid)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
