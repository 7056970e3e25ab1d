"""llmp.supervisord: supervisord's own log lines in llmp's format."""

from __future__ import annotations

import re

import pytest
from supervisor import loggers

from llmp.supervisord import install

OURS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|CRITICAL) supervisord ")


def test_supervisords_own_lines_are_time_level_program_message(monkeypatch, capsys):
    # Restored after the test: install() patches supervisor's logging module.
    monkeypatch.setattr(loggers.LogRecord, "asdict", loggers.LogRecord.asdict)
    monkeypatch.setattr(loggers, "handle_stdout", loggers.handle_stdout)
    install()
    logger = loggers.getLogger(loggers.LevelsByName.INFO)
    loggers.handle_stdout(logger, "%(asctime)s %(levelname)s %(message)s\n")  # supervisord's
    logger.info("spawned: %(name)r with pid %(pid)s", name="nginx", pid=12)
    logger.warn("exited: api (terminated by SIGKILL; not expected)")
    logger.critical("a critical line")
    lines = capsys.readouterr().out.splitlines()
    assert [OURS.match(line) is not None for line in lines] == [True] * 3, lines
    assert lines[0].endswith(" INFO supervisord spawned: 'nginx' with pid 12")
    assert " WARNING supervisord exited: api " in lines[1]


@pytest.mark.parametrize("level", ["debug", "trace", "blather"])
def test_supervisords_fine_levels_are_debug(monkeypatch, capsys, level):
    monkeypatch.setattr(loggers.LogRecord, "asdict", loggers.LogRecord.asdict)
    monkeypatch.setattr(loggers, "handle_stdout", loggers.handle_stdout)
    install()
    logger = loggers.getLogger(loggers.LevelsByName.BLAT)
    loggers.handle_stdout(logger, "%(message)s\n")
    getattr(logger, level)("x")
    assert " DEBUG supervisord x" in capsys.readouterr().out
