"""The engine: training loop, inference and the feature cache, checkpoints, optimiser, distribution.

``loop`` trains one run folder; ``inference`` encodes tracklets (with mixed precision), caches
features by what produced them and applies the retrieval protocol to a run; ``checkpoint``,
``optim`` and ``distributed`` are the loop's parts.
"""
from __future__ import annotations

from xtfclip_lib.engine import checkpoint, distributed, inference, optim
from xtfclip_lib.engine.checkpoint import config_differences, file_digest, load_checkpoint, save_checkpoint
from xtfclip_lib.engine.distributed import DistEnv, resolve_device
from xtfclip_lib.engine.inference import (FEATURES_DIR, UNTRAINED, FeatureSet, RetrievalCase, RunFeatures,
                                          autocast, autocast_dtype, case_distmats, cpu_has_native_bf16,
                                          data_manifest_digest, evaluate_run, extract_features,
                                          load_features, load_run_model, platform_cases, run_features,
                                          score_cases, test_protocol, untrained_key)
from xtfclip_lib.engine.loop import RUN_FILES, train
from xtfclip_lib.engine.optim import build_optimizer, centralize_gradients

__all__ = ["checkpoint", "distributed", "inference", "optim",
           "train", "RUN_FILES",
           "config_differences", "file_digest", "load_checkpoint", "save_checkpoint",
           "DistEnv", "resolve_device",
           "FEATURES_DIR", "UNTRAINED", "FeatureSet", "RetrievalCase", "RunFeatures", "autocast",
           "autocast_dtype", "case_distmats", "cpu_has_native_bf16", "data_manifest_digest", "evaluate_run",
           "extract_features", "load_features", "load_run_model", "platform_cases", "run_features",
           "score_cases", "test_protocol", "untrained_key",
           "build_optimizer", "centralize_gradients"]
