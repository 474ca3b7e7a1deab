"""The two descriptions of the environment agree, and the project ships what it needs."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_environment_yaml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yaml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, "environment.yaml needs exactly one pip: list"
    assert sorted(pip_lists[0]) == sorted(project["dependencies"]), (
        "environment.yaml pip list and pyproject.toml dependencies differ: "
        f"{set(pip_lists[0]) ^ set(project['dependencies'])}")
    assert {_name(r) for r in pip_lists[0]} >= {"torch", "torchvision", "open-clip-torch", "papermill"}


def test_torch_pair_is_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_presets_and_model_configs_are_package_data():
    import xtfclip_lib
    package = Path(xtfclip_lib.__file__).parent
    assert {p.stem for p in (package / "presets").glob("*.yaml")} >= {"paper", "tiny", "quick"}
    assert {p.stem for p in (package / "model" / "configs").glob("*.json")} >= {"tiny-clip", "micro-clip"}
