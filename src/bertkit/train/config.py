"""The settings of one training run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Settings of one `Trainer` run: steps, batch, optimiser, schedule, cadences, device, precision."""

    out_dir: str
    max_steps: int = 1000
    batch_size: int = 32  # per device and micro-step
    grad_accum: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str | None = None
    precision: str = "auto"  # auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16
    progress: bool = True
    max_minutes: float | None = None  # stop (evaluate, save) once training has run this long
    # Under torchrun: shard parameters, gradients and optimizer state across the ranks (PyTorch FSDP2, one unit per
    # encoder layer plus the rest) instead of replicating them (DDP); for models too big for one device's memory.
    fsdp: bool = False
