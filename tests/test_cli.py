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


# --------------------------------------------------------------------------------------------
# An unusable --out is refused in one line, before any long work (loading, training, features)

@pytest.fixture
def no_long_work(monkeypatch):
    """Make training and feature extraction fail loudly if a command gets as far as starting them."""
    import xtfclip_lib.engine

    def forbidden(*args, **kwargs):
        raise AssertionError("the long work started although --out could never be written")

    monkeypatch.setattr(xtfclip_lib.engine, "train", forbidden)
    monkeypatch.setattr(xtfclip_lib.engine, "run_features", forbidden)
    monkeypatch.setattr(xtfclip_lib.engine, "evaluate_run", forbidden)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_train_out_an_existing_file_is_one_line_error(tmp_path, capsys, no_long_work):
    taken = tmp_path / "notes.txt"
    taken.write_text("not a run folder")
    assert main(["train", "--preset", "tiny", "--out", str(taken)]) == 2
    err = one_line_error(capsys)
    assert str(taken) in err and "existing file" in err
    assert taken.read_text() == "not a run folder"


def test_train_out_below_a_file_is_one_line_error(tmp_path, capsys, no_long_work):
    (tmp_path / "file").write_text("")
    assert main(["train", "--out", str(tmp_path / "file" / "run")]) == 2
    assert str(tmp_path / "file") in one_line_error(capsys)


def test_submit_out_an_existing_folder_is_refused_before_features(tmp_path, capsys, no_long_work):
    folder = tmp_path / "submissions"
    folder.mkdir()
    assert main(["submit", "--run", str(tmp_path / "run"), "--out", str(folder)]) == 2
    err = one_line_error(capsys)
    assert f"--out {folder}" in err and "existing folder" in err


def test_submit_out_below_a_file_is_refused_before_features(tmp_path, capsys, no_long_work):
    (tmp_path / "file").write_text("")
    assert main(["submit", "--run", str(tmp_path / "run"), "--out",
                 str(tmp_path / "file" / "submission.csv")]) == 2
    assert "is a file" in one_line_error(capsys)


def test_evaluate_csv_an_existing_folder_is_refused_before_features(tmp_path, capsys, no_long_work):
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--csv", str(tmp_path)]) == 2
    assert f"--csv {tmp_path}" in one_line_error(capsys)
