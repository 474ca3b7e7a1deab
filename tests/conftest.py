"""Shared fixtures: one small synthetic aerial-ground set per test session."""
from __future__ import annotations

import pytest

from xtfclip_lib.data.synth import generate_synthetic


@pytest.fixture(scope="session")
def quick_root(tmp_path_factory):
    """20 synthetic identities with short tracklets, shared by every test file of the session."""
    root = tmp_path_factory.getbasetemp() / "synthetic-quick"
    if not (root / "manifest.json").is_file():
        generate_synthetic(root, num_ids=20, seed=0, max_frames=16, test_fraction=1 / 3, workers=1,
                           progress=False)
    return root
