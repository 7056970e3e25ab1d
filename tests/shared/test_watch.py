"""Noticing a file's changes (shared/watch.py)."""

from __future__ import annotations

import asyncio

from shared.watch import FileWatch, signature


def test_signature_changes_with_each_replacement_and_is_none_without_a_file(tmp_path):
    path = tmp_path / "f.json"
    assert signature(path) is None
    path.write_text("1")
    first = signature(path)
    (tmp_path / "g.json").write_text("22")
    (tmp_path / "g.json").replace(path)
    assert signature(path) not in (None, first)


def test_inotify_calls_at_once_and_the_poll_without_it(tmp_path):
    path = tmp_path / "watched.json"

    async def scenario() -> None:
        seen: list[bytes | None] = []
        changed = asyncio.Event()

        def check() -> None:
            content = path.read_bytes() if path.exists() else None
            if content and content not in seen:
                seen.append(content)
                changed.set()

        watch = FileWatch(path, check, "test-poll")
        await watch.start()
        try:
            path.write_bytes(b"one")
            await asyncio.wait_for(changed.wait(), 10)
            changed.clear()
            watch._observer.stop()  # as on a bind mount where inotify sees nothing
            path.write_bytes(b"two")
            await asyncio.wait_for(changed.wait(), 10)
            assert seen == [b"one", b"two"]
        finally:
            await watch.stop()

    asyncio.run(scenario())
