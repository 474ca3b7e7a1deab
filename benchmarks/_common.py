"""Shared helper of the benchmark scripts: write a figure file under results/benchmarks/.

Benchmarks compare ratios measured in one run (the machines are shared and noisy); each result
file records the machine it ran on so numbers are never compared across machines by accident.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def machine_info() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_result(name: str, payload: dict) -> Path:
    """Write ``results/benchmarks/<name>.json`` (payload plus machine info) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **payload}, indent=2))
    os.replace(tmp, path)
    return path
