"""Mixed precision: which autocast dtype a device and ``train.amp`` give, and the context for it.

Training and feature extraction both go through these, so that the same setting means the same
numbers everywhere: fp32 on CPU unless bf16 is asked for and native, bf16 (or fp16 with a
gradient scaler) on CUDA.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_MODES", "autocast", "autocast_dtype", "cpu_has_native_bf16"]

AMP_MODES = ("auto", "bf16", "off")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    Elsewhere oneDNN emulates bf16 and a bf16 step is slower than fp32, so ``train.amp='bf16'``
    is refused there.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """``train.amp`` -> autocast dtype, or None for fp32.

    "auto": bf16 on CUDA when supported, else fp16 (with a gradient scaler); None on CPU, where
    it would change the numbers of the embedded default. "bf16": bf16 on CUDA or on a CPU with
    native bf16 (`cpu_has_native_bf16`). "off": None.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp={amp!r}; expected one of {list(AMP_MODES)}")
    if amp == "off":
        return None
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("train.amp='bf16' but this GPU has no bf16; use train.amp=auto (fp16 "
                             "with a gradient scaler) or off")
        if device.type == "cpu" and not cpu_has_native_bf16():
            raise ValueError("train.amp='bf16' but this CPU has no native bf16 (AVX512-BF16 or "
                             "AMX): emulated bf16 is slower than fp32; use train.amp=off")
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
