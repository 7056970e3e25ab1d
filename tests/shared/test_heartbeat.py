"""Heartbeats: written by their program alone, and never again once removed."""

from __future__ import annotations

from shared.heartbeat import Heartbeat


def test_a_heartbeat_removed_is_not_written_again_by_a_late_beat(tmp_path):
    beat = Heartbeat(tmp_path, "proxy", "proxy-1")
    beat.beat()
    assert beat.path.exists()
    beat.remove()
    beat.beat()  # a beat that was under way in a thread when the program stopped
    assert not beat.path.exists()
