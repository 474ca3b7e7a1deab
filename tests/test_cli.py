"""The command line: one-line errors, and the global options on either side of the command."""
from __future__ import annotations

import pytest

from xtfclip_lib.__main__ import main


@pytest.mark.parametrize("argv", [["--debug", "evaluate"], ["evaluate", "--debug"]])
def test_debug_before_or_after_the_command_shows_the_traceback(argv, tmp_path):
    with pytest.raises(FileNotFoundError):
        main([*argv[:1], *argv[1:], "--run", str(tmp_path / "missing")] if argv[0] == "--debug"
             else [argv[0], "--run", str(tmp_path / "missing"), argv[1]])


def test_without_debug_the_error_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "missing" in err


def test_quiet_after_the_command_is_accepted(tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "error: " in capsys.readouterr().err
