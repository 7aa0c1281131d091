"""Recipe: fine-tune any BERT model directory on one of the four task families, then evaluate or predict.

The output directory is a Hugging Face model directory (the best dev checkpoint) plus `metrics.json` and
`bertkit_task.json`; training checkpoints, `metrics.jsonl` and curves live in its `training/` folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bertkit.checkpoint import atomic_write, read_pretraining_record
from bertkit.config import BertConfig
from bertkit.data.pretraining import EpochSampler
from bertkit.errors import BertkitError
from bertkit.model import TASK_MODELS
from bertkit.tasks.base import Task, TaskSettings, pad_batch
from bertkit.tasks.classify import ClassificationTask, PairClassificationTask
from bertkit.tasks.ner import NerTask
from bertkit.tasks.qa import QaTask
from bertkit.tokenizer import Tokenizer
from bertkit.train.loop import TrainConfig, Trainer

TASKS: dict[str, type[Task]] = {
    "cls": ClassificationTask,
    "pair": PairClassificationTask,
    "ner": NerTask,
    "qa": QaTask,
}
TASK_FILE = "bertkit_task.json"
_ARCH_TO_TASK = {
    "BertForSequenceClassification": "cls",
    "BertForTokenClassification": "ner",
    "BertForQuestionAnswering": "qa",
}


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (`bertkit finetune`): task, model, data files, output, training."""

    task: str
    model: str
    train: str
    dev: str | None
    out: str
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    patience: int | None = None  # stop after this many evaluations without a better dev score
    eval_every: int | None = None  # steps; default once per epoch
    max_train_examples: int | None = None
    seed: int = 42
    device: str | None = None
    precision: str = "auto"
    dropout: float | None = None
    log_every: int = 20
    resume: bool = False
    overwrite: bool = False  # replace an earlier output (only the files fine-tuning writes)
    progress: bool = True
    settings: TaskSettings | None = None
    save_model: bool = True  # False: metrics only, no model directory or checkpoints (for many short runs)


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


def fine_tuned_task(model_dir: str | Path) -> str | None:
    """The task a model directory was fine-tuned for (bertkit_task.json, else its HF architecture); None for a
    pre-trained or plain encoder directory."""
    path = Path(model_dir)
    if (path / TASK_FILE).is_file():
        return json.loads((path / TASK_FILE).read_text())["task"]
    arch = (BertConfig.load(path).extra.get("architectures") or [""])[0]
    return _ARCH_TO_TASK.get(arch)


def task_of(model_dir: str | Path, explicit: str | None = None) -> str:
    """The task a model directory was fine-tuned for; an error naming its architecture when it is not a task model."""
    if explicit:
        return explicit
    task = fine_tuned_task(model_dir)
    if task is None:
        arch = (BertConfig.load(model_dir).extra.get("architectures") or [""])[0]
        raise BertkitError(
            f"{model_dir} is a {arch or 'plain BERT'} model, not a fine-tuned task model: fine-tune it first "
            "(bertkit finetune), or use a model directory written by it"
        )
    return task


def load_task_model(model_dir: str | Path, task_name: str | None = None, device: str | None = None):
    """(task, model, tokenizer, id2label) of a fine-tuned model directory, checked to be of the task asked for."""
    path = Path(model_dir)
    name = task_of(path)
    if task_name and TASKS[task_name].model_name != TASKS[name].model_name and not {name, task_name} <= {"cls", "pair"}:
        raise BertkitError(f"{model_dir} was fine-tuned for {name!r}, not {task_name!r}")
    meta = json.loads((path / TASK_FILE).read_text()) if (path / TASK_FILE).is_file() else {}
    task = TASKS[task_name or name](TaskSettings(**meta.get("settings", {})))
    config = BertConfig.load(path)
    id2label = {int(k): v for k, v in (config.extra.get("id2label") or {}).items()}
    model = TASK_MODELS[task.model_name].from_pretrained(path, num_labels=len(id2label) or None)
    if device:
        model.to(device)
    return task, model, Tokenizer.from_pretrained(path), id2label


_NOTED: set[tuple[Path, int]] = set()


def _note_untrained_positions(model_dir: Path, max_seq_length: int) -> None:
    """Say so when fine-tuning reaches positions a bertkit pre-training never showed the model: their position
    embeddings are still the random initial ones (BERT pre-trained its last 10% of steps at full length for this)."""
    seen = read_pretraining_record(model_dir).get("max_seq_length")
    if seen is not None and seen < max_seq_length and (model_dir, max_seq_length) not in _NOTED:
        _NOTED.add((model_dir, max_seq_length))  # once per process: a recipe fine-tunes one model many times
        print(
            f"note: {model_dir} was pre-trained on sequences of up to {seen} tokens, so positions {seen}.."
            f"{max_seq_length - 1} of --max-seq-length {max_seq_length} start from untrained position embeddings "
            f"(to train them: bertkit prepare --max-seq-length {max_seq_length}, then bertkit pretrain --model "
            f"{model_dir} on that data for a few hundred steps)"
        )


def run_finetune(cfg: FinetuneConfig, model_factory: ModelFactory | None = None) -> dict:
    """Fine-tune; returns the best dev metrics (or the last training metrics when there is no dev set)."""
    if cfg.task not in TASKS:
        raise BertkitError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    settings = cfg.settings or TaskSettings(max_seq_length=384 if cfg.task == "qa" else 128)
    task = TASKS[cfg.task](settings)
    out = Path(cfg.out)
    tok = Tokenizer.from_pretrained(cfg.model)
    train_ex = task.read(cfg.train)
    if cfg.max_train_examples:
        train_ex = train_ex[: cfg.max_train_examples]
    labels = task.labels(train_ex)
    label2id = {label: i for i, label in enumerate(labels)} if labels else None
    id2label = {i: label for i, label in enumerate(labels)} if labels else {}
    dev_ex = task.read(cfg.dev) if cfg.dev else None
    if dev_ex is not None and label2id:
        task.check_labels(dev_ex, label2id, cfg.dev)

    config = BertConfig.load(cfg.model)
    if config.max_position_embeddings < settings.max_seq_length:
        raise BertkitError(f"--max-seq-length {settings.max_seq_length} exceeds the model's positions")
    _note_untrained_positions(Path(cfg.model), settings.max_seq_length)
    if labels:
        config.extra["id2label"] = {str(i): label for i, label in id2label.items()}
        config.extra["label2id"] = label2id
    if cfg.dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = cfg.dropout
    elif config.hidden_dropout_prob == 0.0 or config.attention_probs_dropout_prob == 0.0:
        # e.g. pre-trained by a bertkit from before pre-training dropout became a run setting (commit f5e1b9d)
        print(f"note: {cfg.model} has dropout 0 in its config; BERT fine-tunes with 0.1 (pass --dropout 0.1)")
    torch.manual_seed(cfg.seed)
    num_labels = len(labels) if labels else None
    if model_factory is not None:
        model = model_factory(config, num_labels)
    else:
        model = TASK_MODELS[task.model_name].from_pretrained(cfg.model, config=config, num_labels=num_labels)
    model.train()

    train_features = task.features(train_ex, tok, label2id, train=True)
    dev_features = task.features(dev_ex, tok, label2id, train=False) if dev_ex is not None else None
    steps_per_epoch = math.ceil(len(train_features) / cfg.batch_size)
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    eval_every = cfg.eval_every or steps_per_epoch
    train_cfg = TrainConfig(
        out_dir=str(out / "training"),
        max_steps=max_steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        log_every=cfg.log_every,
        eval_every=eval_every if dev_ex is not None else 0,
        save_every=eval_every if cfg.save_model else 0,
        keep_checkpoints=1,
        seed=cfg.seed,
        device=cfg.device,
        precision=cfg.precision,
        progress=cfg.progress,
    )
    dataset = _FeatureSet(train_features)
    scalar_keys = ("label", "start_positions", "end_positions")

    def loader(epoch: int, start: int, rank: int, world: int):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=EpochSampler(len(dataset), cfg.seed, epoch, start, rank, world),
            collate_fn=lambda fs: pad_batch(fs, tok.pad_id, scalar_keys),
        )

    def loss_fn(m, batch):
        return m(**task.model_inputs(batch)).loss, {}

    task_meta = {"task": cfg.task, "settings": asdict(settings)}
    best: dict = {"score": -math.inf, "metrics": {}, "evals_since": 0}

    def save_model_dir(directory: Path) -> None:
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
        (directory / TASK_FILE).write_text(json.dumps(task_meta, indent=2) + "\n")

    def on_eval(metrics: dict) -> bool:
        score = metrics[task.main_metric]
        if score > best["score"]:
            best.update(score=score, metrics=metrics, evals_since=0, step=trainer.state.step)
            if trainer.is_main and cfg.save_model:
                save_model_dir(out)  # the output directory always holds the best model so far
        else:
            best["evals_since"] += 1
        return cfg.patience is not None and best["evals_since"] >= cfg.patience

    eval_fn = None
    if dev_ex is not None:
        eval_fn = lambda m: task.evaluate(m, tok, dev_ex, dev_features, id2label)  # noqa: E731
    trainer = Trainer(model, train_cfg, loader, loss_fn, len(dataset), eval_fn,
                      save_extra=save_model_dir if cfg.save_model else None, on_eval=on_eval)  # fmt: skip
    if cfg.resume:
        trainer.resume()
    trainer.train()
    if dev_ex is None and trainer.is_main and cfg.save_model:
        save_model_dir(out)
    result = {
        "task": cfg.task,
        "dev": best["metrics"],
        "best_step": best.get("step"),
        "train_examples": len(train_ex),
        "train_features": len(train_features),
        "steps": trainer.state.step,
        "labels": labels,
        "args": {k: v for k, v in asdict(cfg).items() if k != "settings"},
        "settings": asdict(settings),
    }
    if trainer.is_main:
        text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
        atomic_write(out / "metrics.json", lambda t: Path(t).write_text(text, encoding="utf-8"))
    return result
