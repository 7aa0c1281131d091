"""The optimiser and learning-rate schedule of BERT's recipe: AdamW without weight decay on biases and LayerNorm,
linear warm-up then linear decay to zero."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict]:
    """Weight decay on weight matrices only: none on biases, LayerNorm and other 1-d parameters. The parameters of
    a module that declares an `lr_scale` (a CRF's transition scores) form groups of their own at `lr` times it."""
    scale_of = {id(p): m.lr_scale for m in model.modules() if hasattr(m, "lr_scale") for p in m.parameters()}
    decay, no_decay = [], []
    scaled: dict[tuple[float, bool], list] = {}
    seen: set[int] = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # a tied weight (the MLM decoder's) is one parameter
            continue
        seen.add(id(p))
        if id(p) in scale_of and lr is not None:
            scaled.setdefault((scale_of[id(p)], p.ndim >= 2), []).append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for (scale, decays), params in scaled.items():
        groups.append({"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": lr * scale})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    eps: float = 1e-8,
    device: torch.device | None = None,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`, with the fused kernel on CPU and CUDA (unless `fused` is False): one pass over
    each parameter's state instead of one per operation, far faster than the default foreach kernel on the CPU
    (`python benchmarks/throughput.py` runs both)."""
    device = device or next(model.parameters()).device
    fused = fused and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, weight_decay, lr), lr=lr, eps=eps, fused=fused)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_ratio: float, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`linear_schedule` over `total_steps`, warming up for `warmup_ratio` of them (at least one step)."""
    warmup = max(1, int(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))
