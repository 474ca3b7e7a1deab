"""The engine: training loop, inference and the feature cache, the retrieval protocol, checkpoints,
optimiser, mixed precision and distribution.

``loop`` trains one run folder (`train`); ``inference`` encodes tracklets into a `FeatureSet`;
``cache`` keeps features keyed by what produced them; ``protocol`` is the one retrieval protocol of
validation and test (`score_cases`); ``run`` loads a run folder's model and features
(`run_features`, `evaluate_run`); ``checkpoint``, ``optim``, ``amp`` and ``distributed`` are the
loop's parts.
"""
from __future__ import annotations

from xtfclip_lib.engine import amp, cache, checkpoint, distributed, inference, optim, protocol, run
from xtfclip_lib.engine.amp import AMP_MODES, autocast, autocast_dtype, cpu_has_native_bf16
from xtfclip_lib.engine.cache import (FEATURES_DIR, UNTRAINED, data_manifest_digest, features_key, load_features,
                                      save_features, untrained_key)
from xtfclip_lib.engine.checkpoint import config_differences, file_digest, load_checkpoint, save_checkpoint
from xtfclip_lib.engine.distributed import DistEnv, resolve_device
from xtfclip_lib.engine.inference import FeatureSet, build_clip_memory, encode_lists, extract_features
from xtfclip_lib.engine.loop import RUN_FILES, train
from xtfclip_lib.engine.optim import build_optimizer, centralize_gradients
from xtfclip_lib.engine.protocol import (RetrievalCase, case_distmats, platform_cases, score_cases, test_protocol,
                                         validation_protocol)
from xtfclip_lib.engine.run import RunFeatures, evaluate_run, load_run_model, run_features

__all__ = ["amp", "cache", "checkpoint", "distributed", "inference", "optim", "protocol", "run",
           "train", "RUN_FILES",
           "AMP_MODES", "autocast", "autocast_dtype", "cpu_has_native_bf16",
           "FEATURES_DIR", "UNTRAINED", "data_manifest_digest", "features_key", "load_features", "save_features",
           "untrained_key",
           "config_differences", "file_digest", "load_checkpoint", "save_checkpoint",
           "DistEnv", "resolve_device",
           "FeatureSet", "build_clip_memory", "encode_lists", "extract_features",
           "build_optimizer", "centralize_gradients",
           "RetrievalCase", "case_distmats", "platform_cases", "score_cases", "test_protocol", "validation_protocol",
           "RunFeatures", "evaluate_run", "load_run_model", "run_features"]
