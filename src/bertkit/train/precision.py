"""Mixed precision: which dtype the forward pass runs in, and the autocast context that applies it.

Only on CUDA; on CPU training runs in fp32. fp16 also needs loss scaling (`torch.amp.GradScaler`), which the loop
enables exactly when `amp_dtype` returns float16.
"""

from __future__ import annotations

import torch


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None for full fp32. "auto" is bf16 on CUDA devices that
    support it (same range as fp32, so no loss scaling) and fp32 otherwise."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None) -> torch.autocast:
    """The forward pass's context: autocast to `dtype` on CUDA, or a disabled one (plain fp32) for None."""
    if dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=dtype)
