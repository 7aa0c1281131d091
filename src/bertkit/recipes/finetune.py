"""Recipe: fine-tune any BERT model directory on one of the four task families, then evaluate or predict.

The output directory is a Hugging Face model directory (the best dev checkpoint) plus `metrics.json` and
`bertkit_task.json`; training checkpoints, `metrics.jsonl` and curves live in its `training/` folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bertkit.checkpoint import read_pretraining_record
from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.files import (
    atomic_temps,
    atomic_write,
    check_output_not_input,
    claim_output_dir,
    disk_full_as_error,
    output_lock,
    release_output_dir,
)
from bertkit.model import encoder_layers
from bertkit.options import by_flag, check_config
from bertkit.recipes.config import FinetuneConfig, finetune_learning_rate
from bertkit.tasks.base import Inference, pad_batch
from bertkit.tasks.model_dir import TASK_FILE, TASK_HEADS, fine_tuned_task, head_labels, write_task_record
from bertkit.tasks.registry import TASKS, task_class
from bertkit.tasks.settings import TaskSettings
from bertkit.tokenizer import TOKENIZER_FILES, Tokenizer
from bertkit.train.distributed import dist_info
from bertkit.train.loop import Trainer
from bertkit.train.metrics_log import Curves
from bertkit.train.state import CONTENTS, claim_run_dir, contents_digest, end_replacement, latest_checkpoint

# Builds the model to train from the (label-completed) config and the number of labels, instead of loading
# `cfg.model`'s weights into the task's standard model: experiments use it for probes and other architectures.
ModelFactory = Callable[[BertConfig, "int | None"], torch.nn.Module]


class _FeatureSet(torch.utils.data.Dataset):
    def __init__(self, features):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key):
        return self.features[key[1] if isinstance(key, tuple) else key]


_NOTED: set[tuple[Path, int]] = set()


def _note_untrained_positions(model_dir: Path, max_seq_length: int) -> None:
    """Say so when fine-tuning reaches positions a bertkit pre-training never showed the model: their position
    embeddings are still the random initial ones (BERT pre-trained its last 10% of steps at full length for this)."""
    seen = read_pretraining_record(model_dir).get("max_seq_length")
    if seen is not None and seen < max_seq_length and (model_dir, max_seq_length) not in _NOTED:
        _NOTED.add((model_dir, max_seq_length))  # once per process: a recipe fine-tunes one model many times
        print(f"note: the model was pre-trained on up to {seen} tokens; positions {seen}-{max_seq_length - 1} "
              "start untrained and are learned here")  # fmt: skip


CHECKPOINTS_DIR = "training"  # inside --out: the checkpoints that --resume continues from
# The files fine-tuning writes directly in --out (the best model, its tokenizer, task file and metrics), the
# training/ folder, and what a write killed half-way leaves: the only entries --overwrite (or a fresh start after
# --resume found nothing to resume) removes.
OUTPUT_FILES = (
    "config.json",
    "model.safetensors",
    *TOKENIZER_FILES,
    TASK_FILE,
    "metrics.json",
)
_BEST_TMP = ".tmp-best-model"
STALE_OUTPUT = (_BEST_TMP, *atomic_temps(OUTPUT_FILES))
OUTPUT_OWNS = (*OUTPUT_FILES, CHECKPOINTS_DIR, *STALE_OUTPUT)


def _inputs(cfg: FinetuneConfig) -> list[str]:
    """What fine-tuning reads, which its --out must neither be nor hold."""
    return [cfg.model, cfg.train_file, *([cfg.dev_file] if cfg.dev_file else [])]


def _claim_output(cfg: FinetuneConfig, out: Path) -> bool:
    """Check --out before anything is written (see `bertkit.train.state.claim_run_dir`); True when there is a
    checkpoint to resume from."""
    checkpoints = out / CHECKPOINTS_DIR

    def finished() -> str | None:
        model = (out / "model.safetensors").is_file() and not checkpoints.is_dir()
        if not ((out / "metrics.json").is_file() or model):
            return None
        where = "no complete checkpoint in training/" if checkpoints.is_dir() else "no checkpoint (training/)"
        return (f"it holds a finished fine-tuned model but {where}; pass --overwrite to fine-tune again (it "
                "replaces that model), or choose a new --out")  # fmt: skip

    return claim_run_dir(
        out, checkpoints, OUTPUT_OWNS, STALE_OUTPUT, command="finetune", inputs=_inputs(cfg), overwrite=cfg.overwrite,
        resume=cfg.resume, what="fine-tuned model",
        # Written only by fine-tuning: outputs of a bertkit from before the owner mark are recognised by these.
        is_own_output=(out / TASK_FILE).is_file() or latest_checkpoint(checkpoints) is not None, finished=finished,
    )  # fmt: skip


def _note_fresh_parameters(model: torch.nn.Module, num_labels: int | None, why: str = "") -> None:
    """Name what the model directory did not hold, in one plain line each: a new task head is what fine-tuning
    expects (not a warning); anything else initialised at random is worth a note."""
    fresh = getattr(model, "fresh_parameters", [])
    task_head = sorted({n.split(".")[0] for n in fresh if n.startswith(TASK_HEADS)})
    others = [n for n in fresh if n.split(".")[0] not in task_head]
    if task_head:
        size = f" for {num_labels} label{'s' if num_labels != 1 else ''}" if num_labels else ""
        why = why or "the usual start of fine-tuning"
        print(f"{', '.join(task_head)}: a new task head{size}, trained from scratch ({why})")
    if others:
        print(f"note: not in the model directory, so initialised at random: {', '.join(others)}")


def _trained_head_labels(model_dir: str | Path, task_name: str) -> list[str] | None:
    """The labels, in row order, of the trained head of this task's kind that `model_dir` holds (transformers'
    LABEL_i where its config names none); None where it holds no such head."""
    name = fine_tuned_task(model_dir)
    if name is None or TASKS[name].head != TASKS[task_name].head:
        return None
    return head_labels(BertConfig.load(model_dir))


def _head_labels(labels: list[str] | None, model_dir: str | Path, task_name: str) -> tuple[list[str] | None, str]:
    """The data's labels in the row order of the model's trained head, where that head knows the same labels (its
    rows then keep their meaning), and why a head must start afresh: a head trained for other labels of the same
    number would load row for row, each row answering for another label."""
    trained = _trained_head_labels(model_dir, task_name) if labels else None
    if trained is None or not labels:
        return labels, ""
    if sorted(trained) == sorted(labels):
        return trained, ""
    if len(trained) != len(labels):
        return labels, ""  # another shape: the loader starts the head afresh by itself
    return labels, f"the model's head was trained for the labels {', '.join(trained)}, not these"


def _start_head_afresh(model: torch.nn.Module, fresh: torch.nn.Module) -> None:
    """Give `model` the task head of the freshly initialised `fresh` (same class and config) and list it as fresh."""
    head = {k: v for k, v in fresh.state_dict().items() if k.startswith(TASK_HEADS)}
    model.load_state_dict(head, strict=False)
    model.fresh_parameters = sorted({*getattr(model, "fresh_parameters", []), *head})


def _move_into(src: Path, out: Path) -> None:
    """Move every file of the folder `src` into `out` (each by an atomic rename), then remove `src`."""
    for f in sorted(src.iterdir(), key=lambda p: p.name == "model.safetensors"):  # the weights last
        os.replace(f, out / f.name)
    src.rmdir()


def run_finetune(cfg: FinetuneConfig, model_factory: ModelFactory | None = None) -> dict:
    """Fine-tune, and return what `metrics.json` in `cfg.out` records: the task, `dev` (the best dev evaluation's
    metrics; empty without a dev file, when the last model is kept), `best_step` and `best_epoch`, the training
    examples and features, the steps trained, the labels, the run's settings (`args`) and the task settings the
    saved model has. No other bertkit process writes into `cfg.out` meanwhile."""
    check_config(cfg, FinetuneConfig)
    if cfg.patience is not None and not cfg.dev_file:  # else it would be accepted and never stop anything
        raise BertkitError("--patience counts dev evaluations without a better score: give --dev")
    with output_lock(cfg.out, "finetune") if dist_info()[0] == 0 else nullcontext():
        return _finetune(cfg, model_factory)


def _finetune(cfg: FinetuneConfig, model_factory: ModelFactory | None = None) -> dict:
    task = task_class(cfg.task)(cfg.settings)
    settings = task.settings
    out = Path(cfg.out)
    tok = Tokenizer.from_pretrained(cfg.model)
    train_ex = task.read(cfg.train_file)
    if cfg.max_train_examples:
        train_ex = train_ex[: cfg.max_train_examples]
    task.check_trainable(train_ex)
    labels, new_head = _head_labels(task.labels(train_ex), cfg.model, task.name)
    label2id = {label: i for i, label in enumerate(labels)} if labels else None
    id2label = {i: label for i, label in enumerate(labels)} if labels else {}
    dev_ex = task.read(cfg.dev_file) if cfg.dev_file else None
    if dev_ex is not None and label2id:
        task.check_labels(dev_ex, label2id, cfg.dev_file)
    check_output_not_input(out, _inputs(cfg))  # at once; the rest of the claim once nothing can fail before writing

    config = BertConfig.load(cfg.model)
    if cfg.train.learning_rate is None:
        lr, why = finetune_learning_rate(config.hidden_size)
        print(f"learning rate {lr:g} ({why}; --learning-rate sets another)")
        cfg = replace(cfg, train=replace(cfg.train, learning_rate=lr))
    if config.max_position_embeddings < settings.max_seq_length:
        raise BertkitError(f"--max-seq-length {settings.max_seq_length} exceeds the model's positions")
    if cfg.notes:
        _note_untrained_positions(Path(cfg.model), settings.max_seq_length)
    if labels:
        config.extra["id2label"] = {str(i): label for i, label in id2label.items()}
        config.extra["label2id"] = label2id
    config.extra.update(task.model_config())
    if cfg.dropout is not None:
        config = replace(config, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    elif config.hidden_dropout_prob == 0.0 or config.attention_probs_dropout_prob == 0.0:
        # e.g. pre-trained by an older bertkit, which saved the run's dropout into the model's config
        print(f"note: {cfg.model} has dropout 0 in its config; BERT fine-tunes with 0.1 (pass --dropout 0.1)")
    torch.manual_seed(cfg.train.seed)
    num_labels = len(labels) if labels else None
    if model_factory is not None:
        model = model_factory(config, num_labels)
    else:
        model = task.model_class.from_pretrained(cfg.model, config=config, num_labels=num_labels)
        if new_head:
            _start_head_afresh(model, task.model_class(config, num_labels=num_labels))
        if not cfg.resume:  # a resumed run's weights come from its checkpoint, which says so
            _note_fresh_parameters(model, num_labels, new_head)
    model.train()

    train_features = task.features(train_ex, tok, label2id, train=True)
    notes = [task.long_inputs_note(len(train_ex), cfg.train_file)]
    dev_features = task.features(dev_ex, tok, label2id, train=False) if dev_ex is not None else None
    if dev_ex is not None:
        notes.append(task.long_inputs_note(len(dev_ex), cfg.dev_file))
    for note in filter(None, notes if cfg.notes else []):
        print(note)
    steps_per_epoch = math.ceil(len(train_features) / cfg.train.batch_size)
    max_steps = cfg.train.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = cfg.train.eval_every or steps_per_epoch
    train_cfg = replace(
        cfg.train,
        out_dir=str(out / CHECKPOINTS_DIR),
        max_steps=max_steps,
        eval_every=eval_every if dev_ex is not None else 0,
        save_every=(cfg.train.save_every or eval_every) if cfg.save_model else 0,
        keep_checkpoints=1,  # the best model is kept in --out; the checkpoint is only for --resume
    )
    dataset = _FeatureSet(train_features)
    scalar_keys = ("label", "start_positions", "end_positions")

    def loss_fn(m, batch):
        return m(**task.model_inputs(batch)).loss, {}

    def save_extra(directory: Path) -> None:
        """Beside the weights of a model directory: the tokenizer and the task file."""
        tok.save_pretrained(directory)
        write_task_record(directory, task)

    def save_best() -> None:
        """Replace the model in --out by the current one: written beside, then each file renamed into place, so
        a kill leaves the earlier best model or the new one (and a temporary folder that the next start removes)."""
        trainer.check_finite_weights()
        if not (trainer.is_main and cfg.save_model):
            return
        tmp = out / _BEST_TMP
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with disk_full_as_error(out, "the best model saved before is intact; free some space, then run again "
                                    "with --resume"):  # fmt: skip
                model.save_pretrained(tmp)
                save_extra(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _move_into(tmp, out)

    def on_eval(metrics: dict) -> bool:
        best = trainer.state.recipe  # saved with every checkpoint: a resumed run knows the best so far
        score = metrics[task.main_metric]
        if score > best.get("score", -math.inf):
            epoch = min(trainer.state.epoch + 1, trainer.epochs_total)
            best.update(score=score, metrics=trainer.state.last_eval, evals_since=0, step=trainer.state.step,
                        epoch=epoch, settings=asdict(task.settings))  # fmt: skip
            save_best()  # the output directory always holds the best model so far
        else:
            best["evals_since"] = best.get("evals_since", 0) + 1
        return cfg.patience is not None and best["evals_since"] >= cfg.patience

    def eval_fn(m) -> dict:
        run = Inference(m, tok, id2label)
        task.calibrate(run, dev_ex, dev_features)  # e.g. multi-label thresholds, saved with the model
        return task.evaluate(run, dev_ex, dev_features)

    out_existed = out.exists()
    resuming = _claim_output(cfg, out)
    trainer = Trainer.from_dataset(
        model, train_cfg, dataset, lambda fs: pad_batch(fs, tok.pad_id, scalar_keys), loss_fn,
        eval_fn=eval_fn if dev_ex is not None else None, save_extra=save_extra if cfg.save_model else None,
        on_eval=on_eval, shard_units=encoder_layers,
        bar_metric=(f"dev {task.main_metric}", task.main_metric), identity=_identity(cfg, settings, labels),
        curves=Curves(held_out_scores=task.curve_scores),
    )  # fmt: skip
    if resuming:
        trainer.resume()
    trainer.after_checkpoint = lambda: end_replacement(out, OUTPUT_OWNS, out / CHECKPOINTS_DIR, succeeded=True)
    try:
        trainer.train()
        if dev_ex is None:
            save_best()
    except BaseException as e:
        # Failed or interrupted before a first checkpoint: the earlier model --overwrite set aside comes back, or
        # (diverged, disk full, Ctrl-C) --out is left as this run found it: the same command starts again.
        if trainer.is_main and not end_replacement(out, OUTPUT_OWNS, out / CHECKPOINTS_DIR, succeeded=False):
            kept = latest_checkpoint(out / CHECKPOINTS_DIR) is not None or (out / "model.safetensors").is_file()
            if isinstance(e, (BertkitError, KeyboardInterrupt)) and not resuming and not kept:
                release_output_dir(out, OUTPUT_OWNS, created=not out_existed)
        raise
    best = trainer.state.recipe
    if trainer.is_main:
        print(_closing_line(cfg, task.main_metric, best, trainer, out, dev_ex is not None))
    result = {
        "task": cfg.task,
        "dev": best.get("metrics", {}),
        "best_step": best.get("step"),
        "best_epoch": best.get("epoch"),
        "train_examples": len(train_ex),
        "train_features": len(train_features),
        "steps": trainer.state.step,
        "labels": labels,
        "args": _run_record(cfg),
        "settings": best.get("settings", asdict(settings)),  # as the saved model has them (dev thresholds)
    }
    if trainer.is_main:
        text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
        atomic_write(out / "metrics.json", lambda t: Path(t).write_text(text, encoding="utf-8"))
        end_replacement(out, OUTPUT_OWNS, out / CHECKPOINTS_DIR, succeeded=True)
    trainer.close()
    return result


def _identity(cfg: FinetuneConfig, settings: TaskSettings, labels: list[str] | None) -> dict:
    """What decides a fine-tuning run beyond its training settings, by flag (see `Trainer`'s `identity`): a
    --resume with another task, model, data file (or one whose contents changed) or label set is refused. Paths
    are absolute, so a resume from another folder compares the same files. --epochs may change, as --max-steps may."""
    files = {"--model": cfg.model, "--train": cfg.train_file, "--dev": cfg.dev_file}
    data = {flag: path for flag, path in files.items() if flag != "--model" and path}
    return {
        "--task": cfg.task,
        **{flag: os.path.abspath(path) if path else None for flag, path in files.items()},
        **by_flag(cfg, ("max_train_examples", "dropout", "patience")),
        **by_flag(settings),
        "labels": list(labels) if labels else None,
        # last: a changed label set says more than a changed file
        **{CONTENTS + flag: contents_digest(path) for flag, path in data.items()},
    }


def _run_record(cfg: FinetuneConfig) -> dict:
    """The run's settings as metrics.json records them: one flat object (the task settings apart), its keys the
    names of the flags that set them."""
    t = cfg.train
    return {"task": cfg.task, "model": cfg.model, "train": cfg.train_file, "dev": cfg.dev_file, "out": cfg.out,
            "epochs": cfg.epochs, "max_steps": t.max_steps, "batch_size": t.batch_size,
            "learning_rate": t.learning_rate, "weight_decay": t.weight_decay, "warmup_ratio": t.warmup_ratio,
            "patience": cfg.patience, "eval_every": t.eval_every, "max_train_examples": cfg.max_train_examples,
            "seed": t.seed, "device": t.device, "precision": t.precision, "dropout": cfg.dropout,
            "log_every": t.log_every, "resume": cfg.resume, "overwrite": cfg.overwrite, "progress": t.progress,
            "save_model": cfg.save_model}  # fmt: skip


def _closing_line(cfg: FinetuneConfig, metric: str, best: dict, trainer: Trainer, out: Path, has_dev: bool) -> str:
    """The run's end state in one line: the best dev score, when and where it was saved."""
    saved = f"saved to {out}" if cfg.save_model else f"metrics in {out / 'metrics.json'} (no model saved)"
    epochs = f"of {trainer.epochs_total}"
    if not has_dev:
        epoch = min(trainer.state.epoch + 1, trainer.epochs_total)
        return f"no --dev: the last model (step {trainer.state.step}, epoch {epoch} {epochs}) {saved}"
    if "score" not in best:  # resumed from a checkpoint of an older bertkit, which did not record the best
        return f"dev {metric} {trainer.state.last_eval.get(metric, float('nan')):.3f} at the last step; {saved}"
    return f"best dev {metric} {best['score']:.3f} at step {best['step']} (epoch {best['epoch']} {epochs}), {saved}"


GRID_RECORD = "grid.json"
GRID_OWNS = (*OUTPUT_OWNS, "runs", GRID_RECORD, "grid.md")


def run_grid(cfg: FinetuneConfig, learning_rates: Sequence[float | None]) -> dict:
    """The BERT paper's fine-tuning protocol: one run per learning rate and seed (`cfg.seeds` of them from
    `cfg.train.seed`), each a fine-tuned model directory in `cfg.out`/runs/; the best on the dev set is copied to
    `cfg.out` itself, with `grid.md` (a table of every run) and `grid.json`. Finished runs are read back, so an
    interrupted grid continues with --resume. Returns the best run's result plus `runs` and `best`."""
    if not cfg.dev_file:
        raise BertkitError("several --learning-rate values or --seeds choose the best run on dev data: give --dev")
    out = Path(cfg.out)
    metric = task_class(cfg.task).main_metric
    claim_output_dir(out, GRID_OWNS, command="finetune", inputs=_inputs(cfg), overwrite=cfg.overwrite,
                     resume=cfg.resume, is_own_output=(out / GRID_RECORD).is_file(),
                     what="fine-tuning grid")  # fmt: skip
    rows = []
    for lr in learning_rates:
        for seed in range(cfg.train.seed, cfg.train.seed + cfg.seeds):
            run = out / "runs" / f"lr{lr:g}_seed{seed}" if lr is not None else out / "runs" / f"seed{seed}"
            if (run / "metrics.json").is_file():
                result = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
                print(f"-- {run.name}: finished before, dev {metric} {result['dev'].get(metric, float('nan')):.4f}")
            else:
                print(f"-- {run.name}", flush=True)
                train = replace(cfg.train, learning_rate=lr, seed=seed)
                result = run_finetune(replace(cfg, out=str(run), train=train, resume=run.exists(), overwrite=False))
            rows.append({"learning_rate": result["args"]["learning_rate"], "seed": seed, "dev": result["dev"],
                         "best_step": result["best_step"], "out": str(run)})  # fmt: skip
    best = max(rows, key=lambda r: r["dev"][metric])  # the first of equals: the earlier rate and seed
    tmp = out / _BEST_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best["out"], tmp, ignore=shutil.ignore_patterns("training", ".*"))
    _move_into(tmp, out)
    table = [f"# Fine-tuning grid: {cfg.task} on {cfg.train_file}, chosen on {cfg.dev_file}", "",
             f"| learning rate | seed | dev {metric} | best step |", "| --- | --- | --- | --- |"]  # fmt: skip
    table += [f"| {r['learning_rate']:g} | {r['seed']} | {r['dev'][metric]:.4f} | {r['best_step']} |" for r in rows]
    table += ["", f"Best: learning rate {best['learning_rate']:g}, seed {best['seed']} (dev {metric} "
              f"{best['dev'][metric]:.4f}), copied to {out}; every run is in {out / 'runs'}."]  # fmt: skip
    atomic_write(out / "grid.md", lambda t: Path(t).write_text("\n".join(table) + "\n", encoding="utf-8"))
    record = {"metric": metric, "runs": rows, "best": best}
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    atomic_write(out / GRID_RECORD, lambda t: Path(t).write_text(text, encoding="utf-8"))
    print("\n".join(table[2:]))
    result = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {**result, "runs": rows, "best": best}
