"""Data: the AG-VPReID on-disk layout, the synthetic aerial-ground set, sampling and transforms.

``layout`` (folder, file and camera names of the AG-VPReID layout), ``attributes`` (the
soft-biometric columns), ``dataset`` (reading the layout into tracklets),
``sampling`` (frame indices and P x K identity batches), ``transforms`` (whole-tracklet
augmentation) and ``loader`` (datasets, frame cache, loaders). The synthetic set's generator is
the subpackage ``xtfclip_lib.data.synth``; its config and `generate_synthetic` are exported here too.

The names below are imported on first use (PEP 562), so that the command line's ``--help`` and
the synthetic generator, which need no torch, do not load it.
"""
from __future__ import annotations

import importlib

_EXPORTS: dict[str, tuple[str, ...]] = {
    "attributes": ("ATTRIBUTES", "CSV_COLUMNS", "ID_COLUMN", "MASKED_ATTRIBUTES", "UNKNOWN_CODE"),
    "layout": ("AERIAL_CAMERAS", "ATTRIBUTE_DIR", "ATTRIBUTE_FILES", "CASE_DIRS", "CASE_SIDES", "GROUND_CAMERAS",
               "MANIFEST", "SPLIT_FOLDERS", "TRAIN_DIR"),
    "dataset": ("AGVPReID", "Tracklet", "attributes_for", "load_agvpreid", "platform_of", "read_attribute_csv",
                "relabel", "scan_split", "split_validation"),
    "loader": ("build_test_loader", "build_train_loader", "decode_frame", "set_loader_epoch"),
    "transforms": ("as_video", "build_test_transform", "build_train_transform"),
    "synth": ("ATTRIBUTE_VALUES", "GENERATOR_VERSION", "SynthConfig", "SynthParams", "generate_synthetic"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    if name in _MODULE_OF:     # looked up each time (not cached), so a swapped module is seen
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
