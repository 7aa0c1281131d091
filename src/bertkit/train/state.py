"""Where a run stands, and the checkpoints that let a killed run continue exactly where it was.

A run directory holds `checkpoint-STEP/` folders (a model directory plus `training_state.pt`: the loop's position,
optimizer, schedule, loss scaler and every random generator) and `latest`, naming the newest complete one. A
checkpoint is written under a temporary name and renamed, so it is complete or absent; `latest` moves only after.
Resuming from one gives the same weights, bit for bit, as a run that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bertkit.data.config import MANIFEST_FILE
from bertkit.errors import BertkitError
from bertkit.files import (
    atomic_temps,
    claim_output_dir,
    hash_file,
    own_entries,
    read_json_object,
    remove_entries,
    settle_set_aside,
)
from bertkit.train.distributed import dist_info
from bertkit.train.metrics_log import CURVES_FILE, METRICS_FILE, TENSORBOARD_DIR

# Temporary entries a killed run can leave in its run directory: a checkpoint being written, and the files of
# `atomic_write` (".NAME.RANDOM.tmp") for `latest` and `metrics.jsonl`. Removed when a run starts or resumes.
LATEST = "latest"  # a file naming the newest complete checkpoint
CHECKPOINTS = "checkpoint-*"
STALE_PATTERNS = (".tmp-checkpoint-*", *atomic_temps((LATEST, METRICS_FILE)))
# Everything a `Trainer` writes in its run directory (a recipe that lets the trainer write there adds its own).
TRAINER_OWNS = (CHECKPOINTS, LATEST, METRICS_FILE, CURVES_FILE, TENSORBOARD_DIR, *STALE_PATTERNS)
TRAINING_STATE = "training_state.pt"  # in a checkpoint folder: written last, so its presence marks it complete


@dataclass
class TrainState:
    """Where training stands, saved with every checkpoint: step, epoch, samples of the epoch consumed, the last
    evaluation, whether the run already stopped early, and what the recipe keeps across a resume."""

    step: int = 0
    epoch: int = 0
    epoch_samples: int = 0  # samples of the current epoch's global order already consumed
    last_eval_step: int = -1  # the step of the last evaluation (-1: none), so a resumed run does not repeat it
    last_eval: dict = field(default_factory=dict)
    stopped_early: bool = False  # `on_eval` asked to stop: a resume must not train on
    # The losses summed since the last log line ({"steps", "loss", "parts"}): the first line after a resume then
    # averages the same steps as in a run that was never interrupted.
    log_window: dict = field(default_factory=dict)
    # The recipe's own bookkeeping (fine-tuning: the best dev score so far, its step, metrics, evaluations since),
    # saved and restored with the checkpoint so that a resumed run decides exactly as an uninterrupted one.
    recipe: dict = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step` optimizer steps; zero-padded so that names sort by step."""
    return f"checkpoint-{step:07d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (one whose training state was written), or None."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    pointer = out_dir / LATEST
    if pointer.is_file():
        candidate = out_dir / pointer.read_text().strip()
        if (candidate / TRAINING_STATE).is_file():
            return candidate
    done = sorted(p for p in out_dir.glob(CHECKPOINTS) if (p / TRAINING_STATE).is_file())
    return done[-1] if done else None


def remove_stale(out_dir: Path) -> None:
    """Delete what a killed run of this directory left half-written (see `STALE_PATTERNS`)."""
    if not out_dir.is_dir():
        return
    from bertkit.files import own_entries, remove_entries

    remove_entries(own_entries(out_dir, STALE_PATTERNS))


def prune_checkpoints(out_dir: Path, newest: Path, keep: int) -> None:
    """Keep `newest` and the `keep - 1` checkpoints before it; remove the others. Never `newest` itself, whatever
    else the folder holds (`latest` must always name a checkpoint that exists), and never a checkpoint of a later
    step: it belongs to a run abandoned at an earlier point, not to this one, so it goes too."""
    older = sorted(p for p in out_dir.glob(CHECKPOINTS) if p.is_dir() and p.name < newest.name)
    kept = older[len(older) - keep + 1 :] if keep > 1 else []
    for old in [p for p in out_dir.glob(CHECKPOINTS) if p.is_dir() and p != newest and p not in kept]:
        shutil.rmtree(old, ignore_errors=True)


def disk_full_error(out_dir: Path, name: str) -> BertkitError:
    """The one line for a checkpoint that a full disk stopped: what was not written, what is intact, what to do."""
    before = latest_checkpoint(out_dir)
    kept = f"the last checkpoint {before.name} is intact" if before else "no checkpoint was written yet"
    again = "run again with --resume" if before else "run again"
    return BertkitError(f"disk full at {out_dir}: {name} was not written ({kept}); free some space, then {again}")


# ---------------------------------------------------------------------------------------------- random generators
def rng_state() -> dict:
    """Every global random generator's state (Python, NumPy, torch, each CUDA device): dropout and masking draw
    from them, so a resumed run must continue each one where it was."""
    # Plain containers and tensors only, so that torch.load(weights_only=True) can read it back.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (CUDA's only where this machine has CUDA)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- training state
def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """An FSDP model's whole weights, gathered from the shards onto the CPU: a collective, every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, whole: any run, sharded or not, on any number of processes, can
    load it. Under FSDP (pass the sharded model) gathering it is a collective, so every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def write_training_state(
    folder: Path,
    train_state: TrainState,
    optimizer_state: dict | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    config: Any,
    identity: dict[str, Any] | None = None,
) -> None:
    """Write `training_state.pt` into a checkpoint folder: the loop's position, the optimizer state (from
    `gather_optimizer_state`), schedule, loss scaler, random generators, the run's config (a dataclass) and its
    `identity` (see `check_same_run`)."""
    state = {
        "train_state": asdict(train_state),
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "config": asdict(config),
        "identity": identity,
    }
    # Through a Python file object: a full disk then surfaces as an OSError (ENOSPC) in the chain.
    with open(folder / TRAINING_STATE, "wb") as f:
        torch.save(state, f)


def read_training_state(checkpoint: Path) -> dict:
    """What `write_training_state` wrote (tensors on the CPU; plain data only, so nothing in it is executed). A
    damaged file is a BertkitError that names the newest intact-looking checkpoint before it, to resume from."""
    try:
        return torch.load(checkpoint / TRAINING_STATE, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        older = sorted(p for p in checkpoint.parent.glob(CHECKPOINTS)
                       if p.name < checkpoint.name and (p / TRAINING_STATE).is_file())  # fmt: skip
        todo = (
            f"move {checkpoint} out of the run folder and resume from {older[-1].name}"
            if older
            else "start the run again with --overwrite"
        )
        said = str(e).strip().splitlines()[0][:120] if str(e).strip() else "no detail"  # an empty file: EOFError()
        raise BertkitError(
            f"{checkpoint / TRAINING_STATE}: damaged, cannot resume from it ({type(e).__name__}: {said}); {todo}"
        ) from None


CONTENTS = "the contents of "  # identity keys that record what a data file holds, not its name: "... of --train"
# The identity key of what `--precision` resolved to on the run's device: `auto` is bf16 on a GPU, fp32 on a CPU, so
# the same flag resumed on the other device would compute in another precision.
COMPUTED_IN = "--precision in effect"


def contents_digest(path: str | Path) -> str:
    """What a data file (or a prepared data directory: its manifest, which counts what its shards hold) contains,
    in 16 hex digits of SHA-256: a file replaced under the same name gives another."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        manifest = read_json_object(path / MANIFEST_FILE, "prepare the data again")
        manifest.pop("seconds", None)  # the one field that differs between two runs of one prepare
        digest.update(json.dumps(manifest, sort_keys=True).encode())
    else:
        hash_file(digest, path)
    return digest.hexdigest()[:16]


def check_same_run(saved: dict, identity: dict[str, Any] | None, run_dir: Path) -> None:
    """Refuse to resume the run whose checkpoint state is `saved` with settings other than it was started with.

    `identity` maps how a user names each setting that decides what the run computes (a flag, or e.g. "labels")
    to its value: data files, model, task, labels, optimiser settings, seed. Resumed with another, the run would
    continue as neither the one started nor the one asked for, with exit 0; with another label set or task the old
    optimizer state does not even fit the new head. A checkpoint of an older bertkit has no identity to compare."""
    before = saved.get("identity")
    if before is None or identity is None:
        return
    for key in [*identity, *(k for k in before if k not in identity)]:  # in the order of the run asked for
        old, new = before.get(key), identity.get(key)
        if (key.startswith(CONTENTS) or key == COMPUTED_IN) and (old is None or new is None):
            continue  # a checkpoint of a bertkit that did not record the data's contents or the precision
        if old != new:
            raise BertkitError(
                f"cannot resume {run_dir}: its run was started with {key} {_shown(old)}, not {_shown(new)}; resume "
                "it with its own settings, or start again with --overwrite (or choose a new --out)"
            )


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(map(repr, value[:8]))}, ... ({len(value)} in all)]"
    return repr(value) if isinstance(value, (str, list)) else str(value)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict, fsdp: bool, checkpoint: Path
) -> None:
    """Load a checkpoint's optimizer state into `optimizer` (of `model`, the unwrapped module). State keyed by
    parameter name loads into any run, sharded or not; the older form keyed by position only into an unsharded one."""
    groups = saved["param_groups"]
    by_name = any(isinstance(p, str) for g in groups for p in g["params"])
    if by_name:
        # A moment of another shape than its parameter would be written past its end by the fused kernel (a crash,
        # or memory corrupted silently): refused by name first.
        params = dict(model.named_parameters())
        for name, moments in saved["state"].items():
            param = params.get(name)
            for key, value in moments.items():
                if param is not None and key != "step" and value.shape != param.shape:
                    raise BertkitError(
                        f"{checkpoint}: its optimizer state for {name} has shape {tuple(value.shape)}, the model's "
                        f"parameter {tuple(param.shape)}: the checkpoint belongs to another model or head"
                    )
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for g, mine in zip(groups, optimizer.param_groups, strict=True):
            g["fused"], g["foreach"] = mine["fused"], mine["foreach"]  # this run's kernel, not the writer's
        # strict=False: a parameter that never had a gradient (the NSP head without NSP) has no state to load.
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_optimizer_state_dict(model, optimizer, saved, options=options)
    elif fsdp:  # keyed by position: written by a bertkit from before FSDP support
        raise BertkitError(f"{checkpoint} is from an older bertkit: resume it without --fsdp")
    else:
        optimizer.load_state_dict(saved)


def claim_run_dir(
    out: Path,
    checkpoints: Path,
    owns: Sequence[str],
    stale: Sequence[str],
    *,
    command: str,
    inputs: Sequence[str | Path],
    overwrite: bool,
    resume: bool,
    is_own_output: bool,
    what: str,
    finished: Callable[[], str | None],
) -> bool:
    """Make `out` a training run's output directory (`bertkit.files.claim_output_dir`: never an input, never a
    folder that is not the command's own unless --overwrite, which sets only `owns` aside until the new run has
    something to keep: see `end_replacement`; what a killed run set aside is settled first), remove the `stale` entries
    a killed run left, and say whether there is a checkpoint in `checkpoints` to resume from. --resume without one
    starts from step 0, saying so, after removing the leftovers of a run killed before its first checkpoint (its
    logs would mislead); it is refused when `finished()` gives a reason (`out` holds a finished model that training
    again would replace), asked once the claim has removed what it may. Under torchrun rank 0 claims and removes;
    the others only look."""
    if resume and overwrite:  # resumed quietly, --overwrite ignored
        raise BertkitError("--resume and --overwrite together: --resume continues the run in --out, --overwrite "
                           "starts it again; give one of them")  # fmt: skip
    if dist_info()[0] != 0:
        return resume and latest_checkpoint(checkpoints) is not None
    existed = out.exists()
    if existed and out.is_dir():
        end_replacement(out, owns, checkpoints, succeeded=False)
    claim_output_dir(out, owns, command=command, inputs=inputs, overwrite=overwrite, resume=resume,
                     is_own_output=is_own_output, set_aside_replaced=True, what=what)  # fmt: skip
    remove_entries(own_entries(out, stale))
    if not resume or latest_checkpoint(checkpoints) is not None:
        return resume
    if not existed:
        print(f"nothing to resume: {out} did not exist yet; starting from step 0")
        return False
    reason = finished()
    if reason is not None:
        raise BertkitError(f"nothing to resume in {out}: {reason}")
    leftovers = own_entries(out, owns)
    remove_entries(leftovers)
    print(f"nothing to resume in {out} (no checkpoint{' yet' if leftovers else ''}): starting from step 0")
    return False


def end_replacement(out: Path, owns: Sequence[str], checkpoints: Path, succeeded: bool) -> bool:
    """Settle what --overwrite set aside in `out` (`bertkit.files.set_aside`): deleted when the new run `succeeded`
    or left a checkpoint to resume from; otherwise put back in place of the new run's entries, so that a run that
    fails or is interrupted early leaves the earlier run as it was. False when nothing was set aside."""
    return settle_set_aside(out, owns, keep_new=lambda: succeeded or latest_checkpoint(checkpoints) is not None)
