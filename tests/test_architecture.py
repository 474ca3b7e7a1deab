"""The folder tree is the architecture: every module belongs to a part, imports point down, and
parts meet only through each other's public names (docs/ARCHITECTURE.md).

The checker reads source files with `ast` (nothing is imported), lazy imports inside functions
included, so that it also runs on the synthetic trees below.
"""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "xtfclip_lib"

# Each part and the parts it may import (besides itself). Ground floor first; docs/ARCHITECTURE.md
# draws the same arrows.
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "utils": frozenset(),
    "data": frozenset({"config", "utils"}),
    "model": frozenset({"config", "utils"}),
    "losses": frozenset({"config", "utils"}),
    "evaluation": frozenset({"config", "utils", "data"}),
    "engine": frozenset({"config", "utils", "data", "model", "losses", "evaluation"}),
    "pretrain": frozenset({"config", "utils", "data", "model", "evaluation"}),
    "workbook": frozenset({"config", "utils", "data", "model", "losses", "evaluation", "engine", "pretrain"}),
    "cli": frozenset({"config", "utils", "data", "model", "losses", "evaluation", "engine", "pretrain",
                      "workbook"}),
}
TOP_FILES = {"__init__", "__main__"}   # the package's own docstring and `python -m xtfclip_lib`


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package_dir: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import of our package in `path`."""
    module = _module_name(path, package_dir)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == PACKAGE:
                found.append((node.lineno, target, [a.name for a in node.names]))
    return found


def _part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def import_violations(package_dir: Path) -> list[str]:
    """Every module outside a part and every import against the arrows, one line each.

    An import is against the arrows when its part may not import the other part (`ALLOWED`),
    or when it reaches into another part's submodules instead of the part's package (a part's
    public names are its package's ``__all__``). ``from xtfclip_lib import part`` counts as an
    import of that part.
    """
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir)
        part = relative.parts[0].removesuffix(".py")
        if len(relative.parts) == 1 and part in TOP_FILES:
            continue
        if part not in ALLOWED:
            problems.append(f"{relative}: belongs to no part (parts: {sorted(ALLOWED)})")
            continue
        for line, target, names in _imports(path, package_dir):
            targets = [f"{PACKAGE}.{n}" for n in names] if target == PACKAGE else [target]
            for module in targets:
                other = _part_of(module)
                if other is None or other == part:
                    continue
                if other not in ALLOWED:
                    problems.append(f"{relative}:{line}: imports {module}, which belongs to no part")
                elif other not in ALLOWED[part]:
                    problems.append(f"{relative}:{line}: {part} imports {other} ({module}): against the arrows")
                elif module.count(".") > 1:
                    problems.append(f"{relative}:{line}: imports {module}: a part is used through its "
                                    f"package, {PACKAGE}.{other}, not its submodules")
    return problems


# --------------------------------------------------------------------------------------------
# The real tree

def test_every_module_belongs_to_a_part_and_imports_follow_the_arrows():
    assert import_violations(ROOT / PACKAGE) == []


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_says_what_is_public_and_it_exists(part):
    module = importlib.import_module(f"{PACKAGE}.{part}")
    public = module.__all__
    assert len(public) == len(set(public)), f"{part}.__all__ lists a name twice"
    missing = [name for name in public if not hasattr(module, name)]
    assert missing == [], f"{part}.__all__ names what {part} does not have"


def test_parts_use_each_other_only_through_public_names():
    """`from xtfclip_lib.<part> import name` across parts: `name` is in that part's __all__."""
    package_dir = ROOT / PACKAGE
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        part = path.relative_to(package_dir).parts[0].removesuffix(".py")
        for line, target, names in _imports(path, package_dir):
            other = _part_of(target)
            if other is None or other == part or target.count(".") > 1:
                continue
            public = importlib.import_module(target).__all__
            problems += [f"{path.relative_to(ROOT)}:{line}: {target}.{n} is not public"
                         for n in names if n not in public]
    assert problems == []


def test_notebooks_import_only_public_names():
    problems = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join(line for cell in cells if cell["cell_type"] == "code"
                         for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith("%"))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
                if node.module == PACKAGE:
                    problems += [f"{notebook.name}: {PACKAGE}.{a.name} is not a part"
                                 for a in node.names if a.name not in ALLOWED]
                    continue
                if node.module.count(".") > 1:
                    problems.append(f"{notebook.name}: imports from {node.module}, a part's submodule")
                    continue
                public = importlib.import_module(node.module).__all__
                problems += [f"{notebook.name}: {node.module}.{a.name} is not public"
                             for a in node.names if a.name not in public]
    assert problems == []


# --------------------------------------------------------------------------------------------
# The checker itself, on synthetic trees

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    package_dir = tmp_path / PACKAGE
    for name, text in {"__init__.py": "", "config.py": "", "evaluation/__init__.py": "",
                       "model/__init__.py": "", "engine/__init__.py": "", **files}.items():
        (package_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (package_dir / name).write_text(text)
    return package_dir


def test_a_clean_synthetic_tree_passes(tmp_path):
    package_dir = _tree(tmp_path, {
        "evaluation/rank.py": "from xtfclip_lib.config import Config\nfrom . import other\n",
        "evaluation/other.py": "",
        "engine/loop.py": "def f():\n    from xtfclip_lib.model import build_model\n"
                          "    from ..evaluation import evaluate\n",
    })
    assert import_violations(package_dir) == []


def test_the_checker_fails_on_a_forbidden_import(tmp_path):
    package_dir = _tree(tmp_path, {
        "evaluation/rank.py": "def f():\n    from xtfclip_lib.model import build_model\n",   # lazy, still caught
        "config.py": "from xtfclip_lib import engine\n",
        "model/net.py": "from ..engine import train\n",                                 # relative form
    })
    problems = import_violations(package_dir)
    assert problems == [
        "config.py:1: config imports engine (xtfclip_lib.engine): against the arrows",
        "evaluation/rank.py:2: evaluation imports model (xtfclip_lib.model): against the arrows",
        "model/net.py:1: model imports engine (xtfclip_lib.engine): against the arrows",
    ]


def test_the_checker_fails_on_a_module_outside_a_part_and_on_reaching_into_submodules(tmp_path):
    package_dir = _tree(tmp_path, {
        "helpers.py": "",
        "engine/loop.py": "from xtfclip_lib.model.backbone import CLIPBackbone\nimport xtfclip_lib.helpers\n",
    })
    problems = import_violations(package_dir)
    assert problems == [
        "engine/loop.py:1: imports xtfclip_lib.model.backbone: a part is used through its package, "
        "xtfclip_lib.model, not its submodules",
        "engine/loop.py:2: imports xtfclip_lib.helpers, which belongs to no part",
        f"helpers.py: belongs to no part (parts: {sorted(ALLOWED)})",
    ]
