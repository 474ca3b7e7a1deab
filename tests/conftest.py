"""Shared fixtures: one small synthetic aerial-ground set per test session, one torch thread."""
from __future__ import annotations

import pytest
import torch

from xtfclip_lib.data import generate_synthetic



@pytest.fixture
def one_thread():
    """One torch thread for the test (files opt in with ``pytestmark``): the machines running
    the suite are small and shared, and bitwise comparisons need one thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def quick_root(tmp_path_factory):
    """20 synthetic identities with short tracklets, shared by every test file of the session."""
    root = tmp_path_factory.getbasetemp() / "synthetic-quick"
    if not (root / "manifest.json").is_file():
        generate_synthetic(root, num_ids=20, seed=0, max_frames=16, test_fraction=1 / 3, workers=1,
                           progress=False)
    return root
