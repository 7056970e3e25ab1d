"""The benchmark's command line (bench/__main__.py): what it measures is what it was asked."""

from __future__ import annotations

import pytest

from bench.__main__ import parse_args


def test_the_crowd_is_a_thousand_streams_unless_asked_otherwise():
    assert parse_args([]).crowd == 1000
    assert parse_args(["--crowd", "250"]).crowd == 250


@pytest.mark.parametrize("argv", [["--crowd", "0"], ["--crowd", "many"], ["--workers", "0"]])
def test_a_count_below_one_or_not_a_number_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err
