"""One training loop for pre-training and fine-tuning.

Each optimizer step: forward and backward over `grad_accum` micro-batches (autocast on CUDA), gradient clipping,
a check that nothing diverged, AdamW and the schedule. Around the steps, on their cadences: a log line, an
evaluation, a checkpoint. The concerns live beside this file: `batches` (what each step trains on), `optim`,
`precision`, `distributed` (DDP/FSDP under torchrun), `state` (checkpoints that resume exactly) and `metrics_log`.
"""

from __future__ import annotations

import gc
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from bertkit.checkpoint import first_non_finite, save_model
from bertkit.errors import BertkitError
from bertkit.files import atomic_write, disk_full_as_error, interrupts_deferred, is_disk_full
from bertkit.machine import cpu_has_native_bf16, keep_freed_memory, pick_device
from bertkit.progress import make_bar
from bertkit.train.batches import Batch, LoaderFn, epoch_loader
from bertkit.train.config import TrainConfig
from bertkit.train.distributed import ShardUnits, any_rank, replicate, reshard, setup_device, shard
from bertkit.train.metrics_log import CURVES_FILE, Curves, MetricsLog, plot_metrics
from bertkit.train.optim import build_optimizer, build_scheduler
from bertkit.train.precision import amp_dtype, autocast, precision_name
from bertkit.train.state import (
    COMPUTED_IN,
    CONTENTS,
    LATEST,
    TrainState,
    check_same_run,
    checkpoint_name,
    disk_full_error,
    gather_model_state,
    gather_optimizer_state,
    latest_checkpoint,
    load_optimizer_state,
    prune_checkpoints,
    read_training_state,
    remove_stale,
    set_rng_state,
    write_training_state,
)

LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]  # -> (loss, its parts as numbers)
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class _LogWindow:
    """The optimizer steps since the last log line: their summed loss (and the parts the loss function reports,
    e.g. MLM and NSP), the real tokens they trained on, and when the window opened."""

    opened: float = field(default_factory=time.perf_counter)
    steps: int = 0
    tokens: int = 0
    loss: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, parts: dict[str, float], tokens: int, micro_batches: int) -> None:
        """One micro-batch of a step of `micro_batches`: its loss counts 1/micro_batches towards its step's, as in
        the gradient."""
        self.tokens += tokens
        self.loss += loss / micro_batches
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v / micro_batches

    def saved(self) -> dict:
        """What a checkpoint keeps of the window: the losses and their steps (not the tokens and time: a resumed
        run's speed is its own)."""
        return {"steps": self.steps, "loss": self.loss, "parts": dict(self.parts)}

    @classmethod
    def restored(cls, saved: dict) -> _LogWindow:
        """A window holding what `saved` kept (empty when it is empty: a checkpoint of an older bertkit)."""
        return cls(steps=saved.get("steps", 0), loss=saved.get("loss", 0.0), parts=dict(saved.get("parts", {})))

    def record(self, lr: float, grad_norm: float) -> dict[str, float]:
        """The log line: mean loss and parts per step, the learning rate and gradient norm of the last step, and
        the speed in real (not padding) tokens per second, all ranks together."""
        return {
            "loss": self.loss / self.steps,
            **{k: v / self.steps for k, v in self.parts.items()},
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tokens / (time.perf_counter() - self.opened),
        }


class Trainer:
    """Runs `loss_fn` over batches from `loader_fn`, with evaluation, logging and checkpoints.

    It writes into `cfg.out_dir` as it is: its checkpoints, metrics.jsonl (appended to) and curves.png (replaced),
    whatever the folder holds. The recipes (`run_pretrain`, `run_finetune`) first make sure the folder is theirs to
    write (`bertkit.files.claim_output_dir`); a script driving a Trainer itself should give it a folder of its own.

    On the CPU it sets the process's malloc to keep up to 1 GB of freed memory for reuse
    (`bertkit.machine.keep_freed_memory`; glibc only), which lasts after the run."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        loader_fn: LoaderFn,
        loss_fn: LossFn,
        samples_per_epoch: int,
        eval_fn: EvalFn | None = None,
        save_extra: Callable[[Path], None] | None = None,
        find_unused_parameters: bool = False,
        on_eval: Callable[[dict[str, float]], bool] | None = None,
        bar_metric: tuple[str, str] | None = None,
        shard_units: ShardUnits | None = None,
        curves: Curves | None = None,
        identity: dict[str, Any] | None = None,
        loading_processes: int | None = None,
    ):
        """`loader_fn`: this rank's batches of an epoch from a position in it (see `batches.LoaderFn`);
        `Trainer.from_dataset` builds it from a dataset. `loss_fn(model, batch)`: (loss, its parts as numbers, which
        are logged). `eval_fn(model)`: held-out metrics. `save_extra(folder)`: writes what a model directory holds
        beside the weights (the tokenizer, a record). `on_eval(metrics)`: sees every evaluation; True stops early.
        `bar_metric`: (label, key) of the evaluation figure the progress bar shows, e.g. ("dev accuracy",
        "accuracy"). `shard_units(model)`: the modules FSDP shards one by one (e.g. the encoder layers; without it,
        the model is one unit). `curves`: what `curves.png` shows. `identity`: what else decides what the run
        computes (its data, model, labels; see `bertkit.train.state.check_same_run`), by the names a user knows
        them by; saved with each checkpoint, and a resume with other values (or other `cfg.identity()`) is refused.
        `loading_processes`: how many processes `loader_fn` makes batches in, for the run's first line (None:
        unknown)."""
        self.cfg = cfg
        # The recipe's settings first (task, model, data files), then the training flags, then the data files'
        # contents: the first difference is the one a refusal names.
        recipe = identity or {}
        contents = {k: v for k, v in recipe.items() if k.startswith(CONTENTS)}
        self.identity = {**{k: v for k, v in recipe.items() if k not in contents}, **cfg.identity(), **contents}
        self.out = Path(cfg.out_dir)
        # Under torchrun the trainer starts the process group unless its caller did; then `close` ends it.
        self._owns_process_group = dist.is_available() and not dist.is_initialized()
        self.device, self.rank, self.world = setup_device(cfg.device)
        self._owns_process_group = self._owns_process_group and dist.is_initialized()
        self.is_main = self.rank == 0
        self.fsdp = cfg.fsdp and self.world > 1
        if cfg.fsdp and not self.fsdp and self.is_main:
            print("note: --fsdp shards across torchrun's processes; with one process it trains as usual")
        # `raw_model` is the module itself (weights to save, evaluation); `model` is what the steps run (DDP's
        # wrapper, which averages gradients across ranks). FSDP shards the module in place: both are the same.
        for module in model.modules():  # the encoder (bertkit.model.BertModel) knows how
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = cfg.gradient_checkpointing
        self.raw_model = model if self.fsdp else model.to(self.device)
        self.model: nn.Module = model
        if self.fsdp:
            shard(model, shard_units)
            if self.is_main:
                print(f"FSDP: parameters, gradients and optimizer state sharded across {self.world} processes")
        elif self.world > 1:
            self.model = replicate(model, self.device, find_unused_parameters)
        self.loader_fn, self.loss_fn, self.eval_fn = loader_fn, loss_fn, eval_fn
        self.samples_per_epoch = samples_per_epoch
        self.save_extra = save_extra
        # Called on rank 0 once each checkpoint is complete, e.g. to delete the earlier run that --overwrite set
        # aside: from then on this run has something to resume from.
        self.after_checkpoint: Callable[[], object] | None = None
        self.on_eval = on_eval
        self.stop = False
        # The fused AdamW kernel takes plain tensors only; FSDP's parameters are sharded DTensors.
        self.optimizer = build_optimizer(
            model, cfg.learning_rate, cfg.weight_decay, cfg.adam_eps, self.device, fused=not self.fsdp
        )
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_ratio, cfg.max_steps)
        self.amp_dtype = amp_dtype(cfg.precision, self.device)
        self.identity[COMPUTED_IN] = precision_name(self.amp_dtype)
        if self.device.type == "cpu":
            keep_freed_memory()  # each step's large tensors reuse the last step's memory (no page faults)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu" and not cpu_has_native_bf16():
            print("note: this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 runs emulated, slower than fp32")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loading_processes = loading_processes
        self.state = TrainState()
        self.metrics = MetricsLog(self.out)
        self.curves = curves or Curves()
        self.bar_metric = bar_metric
        self._started: float | None = None  # when the loop began: the time budget counts from it
        self._saved_step = -1  # the step of the newest checkpoint written or resumed from
        self._window = _LogWindow()  # the steps since the last log line
        # Optimizer steps per pass over the data (the last batch of an epoch may be short), for "epoch 2/3"; each
        # rank gets the same share (see EpochSampler).
        if 0 < samples_per_epoch < self.world:
            raise BertkitError(f"{samples_per_epoch} training examples for {self.world} processes: each process needs "
                               "at least one; use fewer processes or more data")  # fmt: skip
        batches = math.ceil(samples_per_epoch // self.world / cfg.batch_size) if samples_per_epoch else 0
        self.steps_per_epoch = max(1, math.ceil(batches / cfg.grad_accum))
        self.epochs_total = max(1, math.ceil(cfg.max_steps / self.steps_per_epoch))

    @classmethod
    def from_dataset(
        cls,
        model: nn.Module,
        cfg: TrainConfig,
        dataset: torch.utils.data.Dataset,
        collate_fn: Callable[[Sequence[Any]], Batch],
        loss_fn: LossFn,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> Trainer:
        """A trainer over `dataset` (indexed by `(epoch, i)` keys, see `batches.epoch_loader`), shuffled per epoch
        with `cfg.seed` and batched by `collate_fn` in `num_workers` loading processes; `kwargs` as for `Trainer`."""
        pin = pick_device(cfg.device).type == "cuda"  # page-locked batches: asynchronous host-to-GPU copies
        loader_fn = epoch_loader(dataset, collate_fn, cfg.batch_size, cfg.seed, num_workers, pin_memory=pin)
        return cls(model, cfg, loader_fn, loss_fn, len(dataset), loading_processes=num_workers, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Write `checkpoint-STEP` atomically (model directory, `save_extra`, training state), point
        `latest` at it and keep the newest `keep_checkpoints`. Every rank calls it (FSDP gathers); rank 0 writes.

        Non-finite weights are never saved (a `BertkitError` instead); a full disk is one line naming the run
        directory, and leaves the earlier checkpoints and `latest` as they were. A Ctrl-C while it writes waits
        for the checkpoint to be complete, so that the run stops with it."""
        with interrupts_deferred():
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        optimizer_state = None
        if self.fsdp or self.is_main:  # under FSDP a collective: every rank takes part
            optimizer_state = gather_optimizer_state(self.model if self.fsdp else self.raw_model, self.optimizer)
        name = checkpoint_name(self.state.step)
        final, tmp = self.out / name, self.out / f".tmp-{name}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.save_model_dir(tmp)
            if self.is_main:
                if self.save_extra:
                    self.save_extra(tmp)
                self.state.log_window = self._window.saved()
                write_training_state(tmp, self.state, optimizer_state, self.scheduler, self.scaler, self.cfg,
                                     self.identity)  # fmt: skip
        except BaseException as e:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)  # the earlier checkpoints and `latest` are untouched
            if isinstance(e, Exception) and not isinstance(e, BertkitError) and is_disk_full(e):
                raise disk_full_error(self.out, name) from None
            raise
        self._saved_step = self.state.step
        if not self.is_main:
            return
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # the checkpoint appears complete or not at all
        try:
            atomic_write(self.out / LATEST, lambda t: Path(t).write_text(name + "\n"))
        except BaseException:
            # `latest` still names the previous checkpoint, which --resume continues from; kept, this one would be
            # taken for a later run's and removed at the next save.
            shutil.rmtree(final, ignore_errors=True)
            raise
        prune_checkpoints(self.out, final, self.cfg.keep_checkpoints)
        if self.after_checkpoint is not None:
            self.after_checkpoint()

    def save_model_dir(self, path: Path) -> None:
        """Write the model as a model directory (rank 0). Every rank must call it: under FSDP the shards are
        gathered first, a collective."""
        state = gather_model_state(self.model) if self.fsdp else None
        self.check_finite_weights(state)
        if not self.is_main:
            return
        if state is None:
            self.raw_model.save_pretrained(path)  # type: ignore[operator]
        else:
            save_model(self.raw_model, path, state=state)

    def check_finite_weights(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Stop (a `BertkitError`, on every rank alike) when a weight is NaN or infinite: a diverged model is never
        saved, as a checkpoint or as a best model. `state`: the full weights gathered from FSDP shards, if any."""
        if self.fsdp:
            bad = first_non_finite(state.items()) if state is not None else None  # rank 0 holds the gathered state
        else:
            bad = first_non_finite(self.raw_model.state_dict().items())
        if self._agreed(bad is not None):
            weights = f"weight {bad} holds NaN or infinity" if bad else "a weight holds NaN or infinity on rank 0"
            raise self._diverged(self.state.step, weights)

    def resume(self) -> bool:
        """Load the newest checkpoint in the run directory; False when there is none."""
        from bertkit.checkpoint import load_state, read_tensors

        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return False
        saved = read_training_state(ckpt)
        check_same_run(saved, self.identity, self.out)
        fresh = load_state(self.raw_model, read_tensors(ckpt), source=str(ckpt))
        if fresh:  # a head the checkpoint lacks, or of another shape: not this run's checkpoint
            raise BertkitError(f"{ckpt} holds no {fresh[0]} of this model's shape: it is not a checkpoint of this run")
        load_optimizer_state(self.raw_model, self.optimizer, saved["optimizer"], self.fsdp, ckpt)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["train_state"])
        self._window = _LogWindow.restored(self.state.log_window)
        if self.state.step > self.cfg.max_steps:  # it would stop at once and save this later step as the result
            raise BertkitError(
                f"cannot resume {ckpt}: it is at step {self.state.step}, past the {self.cfg.max_steps} steps asked for "
                f"now (--max-steps, or --epochs); resume with at least {self.state.step} steps to continue it"
            )
        self._saved_step = self.state.step
        set_rng_state(saved["rng"])
        if self.is_main:
            remove_stale(self.out)
            self.metrics.truncate(self.state.step)  # the steps past the checkpoint are about to run again
            print(f"resumed from {ckpt} at step {self.state.step}")
            planned = saved["config"].get("max_steps")
            if planned is not None and planned != self.cfg.max_steps:
                print(f"note: the run was started for {planned} steps and now trains to step {self.cfg.max_steps}: "
                      "its learning-rate schedule is the new length's from here on, so it ends unlike a run of "
                      f"{self.cfg.max_steps} steps from the start")  # fmt: skip
        return True

    # ------------------------------------------------------------------ logging and evaluation
    def log(self, record: dict[str, Any]) -> None:
        """Append a record, with the step, to `metrics.jsonl` (and TensorBoard when open); main rank only."""
        if self.is_main:
            self.metrics.write(self.state.step, record)

    def evaluate(self) -> dict[str, float]:
        """Run `eval_fn` under autocast, log the metrics, let `on_eval` ask to stop; {} without `eval_fn`."""
        if self.eval_fn is None:
            return {}
        self.model.eval()
        # Under DDP every rank holds the whole model, so one evaluates and tells the others (each would compute
        # the same numbers); FSDP's shards need every rank in each forward, so there all of them evaluate.
        alone = self.world > 1 and not self.fsdp
        with torch.no_grad(), autocast(self.amp_dtype, self.device):
            metrics = self.eval_fn(self.raw_model) if self.is_main or not alone else {}
        if alone:
            shared = [metrics]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        self.model.train()
        if self.fsdp:
            reshard(self.model)
        self.log({"split": "eval", **metrics})
        # Plain numbers and strings: the state is saved with the checkpoint and read back with weights_only=True.
        self.state.last_eval = json.loads(json.dumps(metrics, default=float))
        self.state.last_eval_step = self.state.step
        if self.on_eval is not None and self.on_eval(metrics):
            self.stop = True
            self.state.stopped_early = True
        return metrics

    def _bar_fields(self, loss: float | None = None, tokens_per_s: float | None = None) -> dict[str, str]:
        """What the progress bar shows after the step count: epoch, loss, speed and the latest evaluation."""
        fields = {"epoch": f"{min(self.state.epoch + 1, self.epochs_total)}/{self.epochs_total}"}
        if loss is not None:
            fields["loss"] = f"{loss:.3f}"
        if tokens_per_s is not None:
            fields["tok/s"] = f"{tokens_per_s:,.0f}"
        if self.bar_metric is not None and self.bar_metric[1] in self.state.last_eval:
            fields[self.bar_metric[0]] = f"{self.state.last_eval[self.bar_metric[1]]:.3f}"
        if self.cfg.max_minutes and self._started is not None:  # the bar's own ETA counts steps, not the budget
            left = max(0.0, 60 * self.cfg.max_minutes - (time.perf_counter() - self._started))
            fields["budget left"] = f"{int(left // 60)}:{int(left % 60):02d}"
        return fields

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        """Run the loop up to `max_steps`; returns the last evaluation's metrics ({} without `eval_fn`).

        Logs, evaluates and checkpoints on their cadences, and once more at the last step; stops early when
        `on_eval` asks or `max_minutes` runs out; draws `curves.png` at the end. A loss, gradient or weight that is
        not finite stops the run with a `BertkitError` (before any of it is saved), as does a full disk."""
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale(self.out)
            self.metrics.open_tensorboard()
            if self.device.type == "cpu":
                print(self._cpu_line())
        bar = make_bar(
            total=cfg.max_steps, initial=self.state.step, desc="train", disable=not (cfg.progress and self.is_main)
        )
        try:
            with disk_full_as_error(self.out, "the checkpoints written so far are intact; free some space, then "
                                    "run again with --resume"):  # fmt: skip
                self._train_steps(bar)
                # Once more at the end (eval_every 0: only then), unless the last step already did it (or a
                # resumed run finished before).
                if self.eval_fn is not None and self.state.last_eval_step != self.state.step:
                    self.evaluate()
                if cfg.save_every and self._saved_step != self.state.step:
                    self.save_checkpoint()
        finally:
            bar.close()
            self.metrics.close()
        if self.is_main:
            plot_metrics(self.metrics.path, self.out / CURVES_FILE, self.curves)
        return self.state.last_eval

    def close(self) -> None:
        """End the process group this trainer started under torchrun; call it once the run's last collective (the
        final save) is done. Left to the interpreter's teardown, gloo's worker threads can abort a run that
        succeeded (SIGABRT, "terminate called without an active exception"). Only after success: on an error the
        other ranks may still be inside a collective, and tearing the group down could hang them."""
        if self._owns_process_group and dist.is_initialized():
            # All ranks past their last collective first: a rank that tore its group down while another still
            # used the connection between them was seen to abort the same way.
            dist.barrier()
            # DDP's wrapper (its gradient buckets and their pending work hold the group) goes now, while the group
            # and the interpreter are alive: left to the trainer's own end, it can be freed at interpreter
            # teardown, after the group it refers to.
            self.model = self.raw_model
            gc.collect()
            dist.destroy_process_group()
        self._owns_process_group = False

    def _cpu_line(self) -> str:
        """What the run was given on the CPU: the model's threads and the loading processes (one thread each)."""
        line = f"CPU: the model runs on {torch.get_num_threads()} threads (OMP_NUM_THREADS sets another number)"
        if self.loading_processes:
            line += f"; batches are made in {self.loading_processes} other process(es), one thread each"
        elif self.loading_processes == 0:
            line += "; batches are made between steps, in this process"
        return line

    def _train_steps(self, bar: tqdm) -> None:
        """The loop itself: optimizer steps until `max_steps`, an early stop, or the time budget."""
        cfg = self.cfg
        self.model.train()
        global_batch = cfg.batch_size * cfg.grad_accum * self.world
        self._started = time.perf_counter()
        postfix = self._bar_fields()
        bar.set_postfix(postfix, refresh=False)
        stopping = self.state.stopped_early  # a run that stopped early stays stopped when resumed
        while self.state.step < cfg.max_steps and not stopping:
            # From where the epoch stands: after a resume, the samples its checkpoint had consumed are not repeated.
            batches = iter(self.loader_fn(self.state.epoch, self.state.epoch_samples, self.rank, self.world))
            while self.state.step < cfg.max_steps:
                window = self._window
                micro_batches, bad_loss = self._accumulate(batches, window)
                if micro_batches == 0:
                    break  # the epoch is over: start the next
                grad_norm = self._optimizer_step(bad_loss)
                self.state.step += 1
                self.state.epoch_samples += global_batch
                window.steps += 1
                bar.update(1)
                if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
                    record = window.record(self.scheduler.get_last_lr()[0], float(grad_norm))
                    if self.world > 1:  # the loss of the global batch, as the gradient has it: the ranks' mean
                        keys = ["loss", *window.parts]
                        mean = torch.tensor([record[k] for k in keys], dtype=torch.float64, device=self.device)
                        dist.all_reduce(mean)
                        record.update(zip(keys, (mean / self.world).tolist(), strict=True))
                    self.log(record)
                    postfix = self._bar_fields(record["loss"], record["tokens_per_s"])
                    bar.set_postfix(postfix, refresh=False)  # drawn with the next step, as often as the bar is
                    self._window = _LogWindow()
                if cfg.eval_every and self.state.step % cfg.eval_every == 0:
                    self.evaluate()
                    postfix.update(self._bar_fields())  # the new score, next to the last loss
                    bar.set_postfix(postfix, refresh=False)
                if cfg.save_every and self.state.step % cfg.save_every == 0:
                    self.save_checkpoint()
                if self.stop:
                    stopping = True
                    if self.is_main:
                        print(f"early stop at step {self.state.step}: no better evaluation for a while")
                    break
                if cfg.max_minutes and self._agreed(time.perf_counter() - self._started > 60 * cfg.max_minutes):
                    stopping = True
                    if self.is_main:
                        print(self._time_budget_note())
                    break
                if micro_batches < cfg.grad_accum:
                    break  # the epoch ran out part-way through this step's micro-batches
            if self.state.step < cfg.max_steps and not stopping:
                self.state.epoch += 1
                self.state.epoch_samples = 0
                if self.samples_per_epoch == 0:
                    raise BertkitError("the training data is empty")

    def _time_budget_note(self) -> str:
        """What stopping on `max_minutes` leaves undone: the steps, and the learning rate that the schedule, planned
        over `max_steps` so that results do not depend on the machine's speed, had not yet decayed."""
        cfg, step = self.cfg, self.state.step
        peak = max(float(g.get("initial_lr", g["lr"])) for g in self.optimizer.param_groups)
        now = max(float(g["lr"]) for g in self.optimizer.param_groups)
        share = now / peak if peak > 0 else 0.0
        return (
            f"time budget of {cfg.max_minutes:g} minutes used: stopping at step {step} of {cfg.max_steps}, the "
            f"learning rate still at {share:.0%} of its peak (it decays to 0 over the {cfg.max_steps} steps planned; "
            "a --max-steps that fits the time gives a schedule that ends)"
        )

    def _accumulate(self, batches: Iterator[Batch], window: _LogWindow) -> tuple[int, float | None]:
        """Forward and backward over the next `grad_accum` micro-batches, their gradients summed (each loss divided
        by `grad_accum`). Returns how many there were (fewer: the epoch ran out) and the first loss that was not
        finite, if any: the caller stops on it before the optimizer step, so that no weight takes it in."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        bad_loss = None
        done = 0
        seen: list[tuple[float, dict, int]] = []  # (loss, its parts, real tokens) of each micro-batch
        batch = next(batches, None)
        for micro in range(cfg.grad_accum):
            if batch is None:
                break
            # One micro-batch ahead, so that the last of a step is known even when the epoch ends before
            # `grad_accum` of them: the gradients are averaged across ranks on it, once per step.
            following = next(batches, None) if micro < cfg.grad_accum - 1 else None
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            sync = following is None or self.world == 1
            ctx = self.model.no_sync() if (self.world > 1 and not sync and not self.fsdp) else nullcontext()
            if self.fsdp:
                self.model.set_requires_gradient_sync(sync)  # type: ignore[operator]
            with ctx, autocast(self.amp_dtype, self.device):
                loss, parts = self.loss_fn(self.model, batch)
            self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_value = loss.item()
            if not math.isfinite(loss_value) and bad_loss is None:
                bad_loss = loss_value
            seen.append((loss_value, parts, int(batch["attention_mask"].sum()) * self.world))
            done += 1
            batch = following
        if 0 < done < cfg.grad_accum:  # the epoch's last step had fewer micro-batches: the mean over those
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(cfg.grad_accum / done)
        for loss_value, parts, tokens in seen:  # the step's loss as its gradient has it: the micro-batches' mean
            window.add(loss_value, parts, tokens, done)
        return done, bad_loss

    def _optimizer_step(self, bad_loss: float | None) -> torch.Tensor:
        """Clip the gradients, stop if the loss or the gradient is not finite (on any rank), else step the
        optimizer, the loss scaler and the schedule. Returns the gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        # Before the optimizer step, so that the weights stay as they were. With fp16 loss scaling an infinite
        # gradient is expected now and then (the scaler skips that step); a loss is never.
        bad_grad = not self.scaler.is_enabled() and not bool(torch.isfinite(grad_norm))
        if self._agreed(bad_loss is not None or bad_grad):
            step = self.state.step + 1
            if bad_loss is not None:
                raise self._diverged(step, f"the training loss is {bad_loss}, not a finite number")
            if bad_grad:
                raise self._diverged(step, f"the gradient norm is {float(grad_norm)}, not a finite number")
            raise self._diverged(step, "the training loss is not a finite number on another rank")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return grad_norm

    def _agreed(self, flag: bool) -> bool:
        return any_rank(flag, self.world, self.device)

    def _diverged(self, step: int, what: str) -> BertkitError:
        """The one line that stops a run that diverged: the step, what is not finite, and what to try."""
        return BertkitError(
            f"step {step}: {what}: training diverged (no non-finite weights were saved); try a lower --learning-rate "
            f"(this run: {self.cfg.learning_rate:g}), --precision fp32, or check the training data"
        )
