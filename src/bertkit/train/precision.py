"""Mixed precision: which dtype the forward pass runs in, and the autocast context that applies it.

On CUDA, "auto" is bf16 where the GPU supports it. On the CPU, "auto" is fp32 on every machine, so that the same
command and seed give the same numbers on any CPU; bf16 is there when asked for (`--precision bf16`), and is fast
only on CPUs that compute it natively (AVX512-BF16 or AMX). fp16 needs loss scaling (`torch.amp.GradScaler`), which
the loop enables exactly when `amp_dtype` returns float16; on the CPU it is not offered.
"""

from __future__ import annotations

import torch

from bertkit.errors import BertkitError


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None for full fp32."""
    if precision == "fp32":
        return None
    if device.type == "cpu":
        if precision == "fp16":
            raise BertkitError("--precision fp16 is for CUDA devices; on the CPU use bf16 or fp32")
        return torch.bfloat16 if precision == "bf16" else None
    if device.type != "cuda":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """What `amp_dtype` resolved to, as `--precision` names it: bf16, fp16 or fp32 (None)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """The forward pass's context: autocast to `dtype` on `device`, or a disabled one (plain fp32) for None."""
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(device.type, dtype=dtype)
