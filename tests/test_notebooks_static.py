"""The committed notebooks, read without running them: valid nbformat v4, stripped, and one
papermill `parameters` cell of typed, commented literals (STYLE §6-§7)."""
from __future__ import annotations

import ast
import io
import logging
import tokenize
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert "01_data_exploration" in names, f"notebooks found: {names}"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=nbformat.NO_CONVERT)


def parameter_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_valid_v4_with_python3_kernel_and_title(notebook):
    path, nb = notebook
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path.name
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: the first cell must be a markdown title"


def test_committed_without_outputs_or_execution_counts(notebook):
    path, nb = notebook
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs; strip them"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


def test_exactly_one_parameters_cell_of_typed_commented_literals(notebook):
    path, nb = notebook
    cells = parameter_cells(nb)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters', expected 1"
    assert cells[0].cell_type == "code"
    source = cells[0].source
    tree = ast.parse(source)
    assert tree.body, f"{path.name}: empty parameters cell"
    for statement in tree.body:
        # typed literals only: papermill does not recompute derived values (STYLE §6)
        assert isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name), \
            f"{path.name} line {statement.lineno}: expected 'name: type = literal'"
        ast.literal_eval(statement.value)
    comments = {tok.start[0]: tok.string for tok in
                tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    for statement in tree.body:
        comment = comments.get(statement.lineno)
        assert comment, f"{path.name} line {statement.lineno}: parameter without a trailing comment"
        # papermill --help-notebook cannot parse a line with a second '=' (in the comment)
        assert "=" not in comment, f"{path.name} line {statement.lineno}: '=' in the comment"


# --------------------------------------------------------------------------------------------
# Defaults: the workbook's preset, and a notebook's own output folder (never the workbook's)

def parameter_defaults(path: Path) -> dict:
    """name -> (annotation, default literal) of the notebook's parameters cell."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    tree = ast.parse(parameter_cells(nb)[0].source)
    return {s.target.id: (ast.unparse(s.annotation), ast.literal_eval(s.value)) for s in tree.body}


def code_after_parameters(nb) -> list[str]:
    cells = [c for c in nb.cells if c.cell_type == "code"]
    index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    return [c.source for c in cells[index + 1:]]


def workbook_defaults() -> dict:
    import inspect

    from xtfclip_lib.workbook.runner import run_workbook

    return {name: p.default for name, p in inspect.signature(run_workbook).parameters.items()}


def test_preset_defaults_match_the_workbook():
    preset = workbook_defaults()["preset"]
    with_preset = {p.stem: parameter_defaults(p)["preset"][1] for p in NOTEBOOKS
                   if "preset" in parameter_defaults(p)}
    assert {"01_data_exploration", "03_ablations", "06_ablation_report"} <= set(with_preset)
    assert with_preset == {name: preset for name in with_preset}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_a_notebook_run_by_hand_writes_to_its_own_folder(path):
    defaults = parameter_defaults(path)
    own = f"results/notebooks/{path.stem}"
    assert defaults["out_dir"][1] == own, f"{path.name}: out_dir defaults to {defaults['out_dir'][1]}"
    workbook_out = Path(str(workbook_defaults()["out"]))
    if path.stem == "03_ablations":         # it trains into run_dir: that is an output too
        assert Path(defaults["run_dir"][1]).is_relative_to(own)
    for name, (_, value) in defaults.items():
        if isinstance(value, str) and Path(value).is_relative_to(workbook_out):
            # only inputs may point into the workbook's folder, and the notebook must say so
            assert name in ("run_dir", "studies_dir"), f"{path.name}: {name} writes into {value}"


def test_the_workbook_passes_only_declared_parameters_of_the_right_type(tmp_path, monkeypatch):
    from xtfclip_lib.workbook import executors
    from xtfclip_lib.workbook import runner as workbook

    calls = []

    def record(name, output, params, *args, **kwargs):   # instead of running the notebook
        output.parent.mkdir(parents=True, exist_ok=True)
        calls.append((name, params))

    monkeypatch.setattr(executors, "execute_notebook", record)
    workbook.run_workbook("tiny", seeds=1, out=tmp_path / "wb", spread_seeds=1,
                          studies=workbook.plan_studies()[:2])
    assert {name for name, _ in calls} == {p.stem for p in NOTEBOOKS}
    types = {"str": str, "list": list, "int": int, "bool": bool}
    for name, params in calls:
        declared = parameter_defaults(NOTEBOOK_DIR / f"{name}.ipynb")
        for key, value in params.items():
            assert key in declared, f"the workbook passes {key} to {name}, which does not declare it"
            assert isinstance(value, types[declared[key][0]]), (name, key, value)
        # everything a workbook notebook writes lands in the workbook's folder
        assert params["out_dir"] == str((tmp_path / "wb").resolve()), (name, params)
        if name == "06_ablation_report":
            assert params["studies_dir"] == params["out_dir"]
        if name == "03_ablations":
            assert Path(params["run_dir"]).is_relative_to(params["out_dir"])


# --------------------------------------------------------------------------------------------
# Relative paths mean the project root, whatever the working directory

@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_first_code_sets_up_the_project_root_and_the_prose_says_so(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    setup = code_after_parameters(nb)[0]
    statements = [ast.unparse(s) for s in ast.parse(setup.replace("%matplotlib inline", "")).body
                  if not isinstance(s, (ast.Import, ast.ImportFrom))]
    assert statements[0] == "explore.notebook_setup()", \
        f"{path.name}: the first statement after the imports must be explore.notebook_setup()"
    prose = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "project root" in " ".join(prose.split()), f"{path.name}: the prose must say what relative paths mean"
    assert "chdir" not in " ".join(code_after_parameters(nb)), path.name


def test_setup_makes_the_project_root_the_working_directory(tmp_path, monkeypatch):
    """What the notebooks' first call does, from a folder that is not the project."""
    from xtfclip_lib.workbook import explore
    from xtfclip_lib.utils import paths

    monkeypatch.chdir(tmp_path)
    top = logging.getLogger()
    handlers, level, package = list(top.handlers), top.level, logging.getLogger("xtfclip_lib").level
    try:
        assert explore.notebook_setup() == NOTEBOOK_DIR.parent == Path.cwd()
        assert paths.resolve("data/synthetic-ag") == NOTEBOOK_DIR.parent / "data" / "synthetic-ag"
    finally:
        top.handlers[:] = handlers
        top.setLevel(level)
        logging.getLogger("xtfclip_lib").setLevel(package)
