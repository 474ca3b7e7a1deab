"""`xtfclip_lib.utils.paths`: relative paths mean the project root, whatever the working directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from xtfclip_lib.utils import paths

CHECKOUT = Path(__file__).resolve().parent.parent


def test_project_root_is_the_checkout_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = paths.project_root()
    assert root == CHECKOUT
    assert (root / "pyproject.toml").is_file() and (root / "xtfclip_lib").is_dir()


def test_resolve_relative_against_the_root_absolute_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("data/synthetic-ag") == CHECKOUT / "data" / "synthetic-ag"
    assert paths.resolve(tmp_path / "x") == tmp_path / "x"
    assert paths.resolve("x", root=tmp_path) == tmp_path / "x"


def test_use_project_root_changes_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # restored after the test
    assert paths.use_project_root() == CHECKOUT
    assert Path.cwd() == CHECKOUT
    assert Path("pyproject.toml").is_file()  # a relative path now means the project root


def test_existing_names_the_resolved_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.existing("pyproject.toml") == CHECKOUT / "pyproject.toml"
    missing = "results/no-such-run/seed0"
    with pytest.raises(FileNotFoundError) as info:
        paths.existing(missing, "run folder")
    message = str(info.value)
    assert message.startswith(f"run folder {CHECKOUT / missing} not found")
    assert f"relative to the project root {CHECKOUT}" in message
    with pytest.raises(FileNotFoundError, match=f"^file {tmp_path / 'gone'} not found$"):
        paths.existing(tmp_path / "gone")   # absolute: nothing to explain


def test_output_checks_refuse_files_and_folders_in_the_way(tmp_path):
    (tmp_path / "file").write_text("")
    assert paths.check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert paths.check_output_dir(tmp_path) == tmp_path
    with pytest.raises(ValueError, match="is an existing file"):
        paths.check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match=f"{tmp_path / 'file'} is a file"):
        paths.check_output_dir(tmp_path / "file" / "a" / "b")
    assert paths.check_output_file(tmp_path / "new" / "s.csv", "--csv") == tmp_path / "new" / "s.csv"
    with pytest.raises(ValueError, match=f"^--csv {tmp_path}: is an existing folder"):
        paths.check_output_file(tmp_path, "--csv")
    with pytest.raises(ValueError, match="is a file"):
        paths.check_output_file(tmp_path / "file" / "s.csv")
    assert os.listdir(tmp_path) == ["file"]   # the checks create nothing
