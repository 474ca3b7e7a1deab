"""Library progress bars: drawn on the console, never frozen into an executed notebook."""
from __future__ import annotations

import io

import pytest

from xtfclip_lib.utils import progress


@pytest.fixture
def automatic(monkeypatch):
    monkeypatch.setattr(progress, "enabled", None)


def drawn(**kwargs) -> str:
    out = io.StringIO()
    for _ in progress.tqdm(range(3), desc="epoch 1/8", file=out, **kwargs):
        pass
    return out.getvalue()


def test_console_draws_the_bar(automatic, monkeypatch):
    monkeypatch.setattr(progress, "in_notebook_kernel", lambda: False)
    assert progress.bars_enabled()
    assert "epoch 1/8" in drawn() and "3/3" in drawn()
    assert drawn(disable=True) == ""            # a caller's own choice still holds


def test_a_notebook_kernel_draws_nothing(automatic, monkeypatch):
    monkeypatch.setattr(progress, "in_notebook_kernel", lambda: True)
    assert not progress.bars_enabled()
    assert drawn() == ""


def test_the_option_overrides_the_detection(monkeypatch):
    monkeypatch.setattr(progress, "in_notebook_kernel", lambda: True)
    monkeypatch.setattr(progress, "enabled", True)
    assert "epoch 1/8" in drawn()
    monkeypatch.setattr(progress, "in_notebook_kernel", lambda: False)
    monkeypatch.setattr(progress, "enabled", False)
    assert drawn() == ""


def test_no_kernel_in_a_test_process():
    assert progress.in_notebook_kernel() is False


def test_the_library_uses_these_bars():
    from xtfclip_lib.engine import loop as engine
    from xtfclip_lib.engine import inference
    from xtfclip_lib.pretrain import loop as pretrain
    from xtfclip_lib.data.synth import write as synth

    for module in (engine, inference, pretrain, synth):
        assert module.tqdm is progress.tqdm, module.__name__


def test_step_counter_reports_every_n_steps_and_leaves_nothing(tmp_path):
    path = progress.counter_path(tmp_path / "deep" / "tiny_clip.pt")
    assert path.name == ".tiny_clip.pt.steps" and progress.read_counter(path) is None
    with progress.StepCounter(path, total=25, every=10) as counter:
        assert progress.read_counter(path) == (0, 25)       # the folder is made, 0 written
        for step in range(1, 10):
            counter.update(step)
        assert progress.read_counter(path) == (0, 25)       # only every 10 steps
        counter.update(10)
        assert progress.read_counter(path) == (10, 25)
        counter.update(25)                                  # the last step always
        assert progress.read_counter(path) == (25, 25)
    assert not path.exists() and list(path.parent.iterdir()) == []
    path.write_text("half a li")
    assert progress.read_counter(path) is None              # unreadable: no progress, no error

