"""The settings of one training run; the recipes' CLI flags for them are generated from these fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bertkit.options import (
    FRACTION,
    NON_NEGATIVE,
    NON_NEGATIVE_NUMBER,
    POSITIVE,
    POSITIVE_NUMBER,
    SEED,
    by_flag,
    check_values,
    option,
)

# The settings that decide the weights a run computes and the model it keeps: a resumed run must have the same
# (`Trainer.resume`). The others (output, cadence of logs and checkpoints, device, time limit) may change; a new
# step count is allowed with a note (continuing a pre-training run further is common).
RUN_DEFINING = ("batch_size", "grad_accum", "learning_rate", "weight_decay", "warmup_ratio", "adam_eps",
                "max_grad_norm", "eval_every", "seed", "precision")  # fmt: skip


@dataclass
class TrainConfig:
    """Settings of one `Trainer` run: steps, batch, optimiser, schedule, cadences, device, precision."""

    out_dir: str = option(
        "runs/train", flag="--out", metavar="RUN_DIR", help="checkpoints, metrics.jsonl and curves.png go here"
    )
    max_steps: int | None = option(1000, type=POSITIVE, help="optimizer steps to train for")  # None: the recipe's
    batch_size: int = option(32, type=POSITIVE, help="examples per device and micro-step")
    grad_accum: int = option(1, type=POSITIVE, help="micro-steps per optimizer step")
    learning_rate: float | None = option(  # None: the recipe chooses (fine-tuning: by the model's size)
        1e-4, type=POSITIVE_NUMBER, help="AdamW's peak rate, reached after warm-up, then decayed linearly to 0"
    )
    weight_decay: float = option(0.01, type=NON_NEGATIVE_NUMBER, help="AdamW's decoupled weight decay")
    warmup_ratio: float = option(0.05, type=FRACTION, help="share of steps with a linearly rising rate")
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0
    log_every: int = option(10, type=POSITIVE, help="steps between logged training losses")
    eval_every: int | None = option(
        200, type=NON_NEGATIVE, help="held-out evaluation interval in steps (0: at the end only)"
    )
    # None: the recipe decides (fine-tuning saves at each evaluation).
    save_every: int | None = option(
        500, type=NON_NEGATIVE,
        help="checkpoint interval in steps (0: no checkpoints, so nothing to --resume from; the model is still saved)",
    )  # fmt: skip
    keep_checkpoints: int = 2
    seed: int = option(0, type=SEED, help="initialisation, data order, masking and dropout")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)")
    precision: str = option(
        "auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 autocast on GPUs that support it, else fp32 (on every CPU, so that results do not depend "
        "on the CPU); bf16 on a CPU: autocast, fast where the CPU has AVX512-BF16 or AMX; fp16: CUDA only",
    )  # fmt: skip
    progress: bool = True
    max_minutes: float | None = option(
        None, type=POSITIVE_NUMBER, help="stop (evaluate, save) once training has run this long"
    )
    gradient_checkpointing: bool = option(
        False,
        help="keep only each encoder layer's input and compute its activations again in the backward pass: "
        "activation memory of one layer instead of all (bigger models, batches or sequences fit), for about a "
        "third more compute per step; the gradients are the same",
    )
    fsdp: bool = option(
        False,
        help="under torchrun: shard parameters, gradients and optimizer state across the processes (PyTorch FSDP2) "
        "instead of replicating them (DDP), for models that do not fit one device; checkpoints are full model "
        "directories either way, and a run resumes with or without --fsdp, on any number of processes (the "
        "global batch is --batch-size x processes, so only the same number resumes exactly)",
    )

    def __post_init__(self) -> None:
        check_values(self)

    def identity(self) -> dict[str, Any]:
        """The `RUN_DEFINING` settings by flag (see `bertkit.train.state.check_same_run`)."""
        return by_flag(self, RUN_DEFINING)
