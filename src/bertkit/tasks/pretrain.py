"""Recipe: pre-train BERT from scratch (or continue) on a prepared data directory with masked LM + NSP.

`objective` "l2r" / "r2l" trains the same encoder as a left-to-right (or right-to-left) language model instead:
causal attention and a next-token loss through the same tied output layer (the baseline of the paper's
bidirectionality ablation). A right-to-left model reads every sequence reversed, in training and afterwards.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bertkit.checkpoint import PRETRAINING_RECORD, read_pretraining_record
from bertkit.config import PRESETS, BertConfig
from bertkit.data.masking import MaskingConfig
from bertkit.data.pretraining import EpochSampler, PretrainingData, collate, read_manifest
from bertkit.errors import BertkitError
from bertkit.model import IGNORE_INDEX, BertForPreTraining, reverse_real_tokens, set_dropout
from bertkit.train.loop import TrainConfig, Trainer, latest_checkpoint


@dataclass
class PretrainConfig:
    """Settings of one pre-training run: data, model, training loop, masking, loss weights, objective."""

    data: str
    model: str = "mini"  # a preset name, a config.json, or a model directory to continue from
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/pretrain"))
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    mlm_weight: float = 1.0
    nsp_weight: float = 1.0  # 0 switches next-sentence prediction off
    eval_instances: int = 2000  # held-out instances per evaluation
    num_workers: int = 1  # data-loading processes (masking happens there)
    resume: bool = False
    overwrite: bool = False  # start again in a run directory holding an earlier run (only its own files removed)
    dropout: float | None = None  # this run's dropout (0 suits short runs); the saved config keeps the model's
    objective: str = "mlm"  # "mlm" (BERT), "l2r" or "r2l" (causal next-token language model)
    init_range: float | None = None  # overrides the config's initializer_range (std of the initial weights)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise BertkitError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")

    def config_overrides(self) -> dict:
        """Every model-config key this run sets: causal attention for l2r/r2l, the init scale (not dropout: that
        is a setting of the run, applied by `build_model`, so the saved config keeps the fine-tuning dropout)."""
        over: dict = {}
        if self.objective != "mlm":
            over["is_decoder"] = True
        if self.init_range is not None:
            over["initializer_range"] = self.init_range
        return over


OBJECTIVES = ("mlm", "l2r", "r2l")


def build_model(
    spec: str,
    vocab_size: int,
    max_seq_length: int,
    config_overrides: dict | None = None,
    dropout: float | None = None,
    **kwargs,
) -> BertForPreTraining:
    """A model from a preset name, a config.json or a model directory; its vocabulary must match the data's.

    `config_overrides` (config.json keys) apply on top of whichever config the model comes with; `dropout`, when
    given, replaces the model's dropout for this run without changing its config (see `set_dropout`)."""
    path = Path(spec)
    over = config_overrides or {}
    if spec in PRESETS:
        model = BertForPreTraining(BertConfig.preset(spec, vocab_size=vocab_size, **over), **kwargs)
    elif path.is_dir():
        config = BertConfig.load(path)
        config.__dict__.update(over)
        model = BertForPreTraining.from_pretrained(path, config=config, **kwargs)
        model.train()
    elif path.suffix == ".json" and path.is_file():
        config = BertConfig.load(path)
        config.__dict__.update(over)
        model = BertForPreTraining(config, **kwargs)
    else:
        raise BertkitError(
            f"--model {spec!r} is neither a preset ({', '.join(PRESETS)}), a config.json nor a model dir"
        )
    if model.config.vocab_size != vocab_size:
        raise BertkitError(
            f"the model has a vocabulary of {model.config.vocab_size} but the data's tokenizer has {vocab_size}; "
            "prepare the data with the model's tokenizer, or pre-train a new model from a preset"
        )
    if model.config.max_position_embeddings < max_seq_length:
        raise BertkitError(
            f"the data holds sequences of up to {max_seq_length} tokens but the model has only "
            f"{model.config.max_position_embeddings} positions"
        )
    if dropout is not None:
        set_dropout(model, dropout)
    return model


def next_token_batch(batch: dict[str, torch.Tensor], reverse: bool = False) -> dict[str, torch.Tensor]:
    """A masked batch -> a language-modelling batch: masking undone, each sequence optionally reversed (its real
    tokens; padding stays at the end), and labels = the next token at every real position but the last."""
    chosen = batch["mlm_labels"] != IGNORE_INDEX
    ids = torch.where(chosen, batch["mlm_labels"], batch["input_ids"])  # (B, T) the original tokens
    types, mask = batch["token_type_ids"], batch["attention_mask"]
    if reverse:
        ids, types = reverse_real_tokens(ids, mask), reverse_real_tokens(types, mask)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(mask[:, 1:].bool(), ids[:, 1:], IGNORE_INDEX)
    return dict(batch, input_ids=ids, token_type_ids=types, mlm_labels=labels)


def objective_batch(batch: dict[str, torch.Tensor], objective: str) -> dict[str, torch.Tensor]:
    """The batch a model of this objective trains on (MLM batches pass through)."""
    return batch if objective == "mlm" else next_token_batch(batch, reverse=objective == "r2l")


def pretraining_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], use_nsp: bool = True, objective: str = "mlm"
):
    """(loss, {mlm_loss, nsp_loss}) of a batch reshaped for `objective`; NSP only with `use_nsp`."""
    batch = objective_batch(batch, objective)
    out = model(
        batch["input_ids"],
        batch["token_type_ids"],
        batch["attention_mask"],
        mlm_labels=batch["mlm_labels"],
        nsp_labels=batch["nsp_labels"] if use_nsp else None,
    )
    parts = {"mlm_loss": out.mlm_loss.item()}
    if out.nsp_loss is not None:
        parts["nsp_loss"] = out.nsp_loss.item()
    return out.loss, parts


@torch.no_grad()
def evaluate_pretraining(
    model: BertForPreTraining,
    data: PretrainingData,
    batch_size: int = 64,
    max_instances: int | None = None,
    objective: str = "mlm",
) -> dict[str, float]:
    """Held-out MLM loss and accuracy (over the chosen tokens) and NSP accuracy, with one fixed mask.

    `mlm_accuracy` counts every chosen token, including the ~10% left unchanged, which a model gets right by
    copying its input; `masked_accuracy` counts only the tokens replaced by [MASK], i.e. prediction from context,
    and `masked_majority` is what always guessing the commonest of those tokens would score (the floor to beat).
    For a left-to-right / right-to-left model the `mlm_*` figures are those of next-token prediction."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(data) if max_instances is None else min(len(data), max_instances)
    loss_sum = correct = predicted = nsp_correct = masked_correct = masked = 0.0
    masked_counts = torch.zeros(model.config.vocab_size, dtype=torch.long)
    for start in range(0, n, batch_size):
        batch = collate([data[i] for i in range(start, min(n, start + batch_size))], data.tokenizer.pad_id)
        batch = objective_batch({k: v.to(device) for k, v in batch.items()}, objective)
        out = model(
            batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], mlm_labels=batch["mlm_labels"]
        )
        chosen = batch["mlm_labels"] != IGNORE_INDEX
        targets = batch["mlm_labels"][chosen]  # (N,) in the order of the logits
        hits = out.mlm_logits.argmax(-1) == targets
        is_mask = batch["input_ids"][chosen] == data.tokenizer.mask_id
        loss_sum += torch.nn.functional.cross_entropy(out.mlm_logits.float(), targets, reduction="sum").item()
        correct += hits.sum().item()
        predicted += targets.numel()
        masked_correct += hits[is_mask].sum().item()
        masked += is_mask.sum().item()
        masked_counts += torch.bincount(targets[is_mask].cpu(), minlength=len(masked_counts))
        nsp_correct += (out.nsp_logits.argmax(-1) == batch["nsp_labels"]).sum().item()
    model.train(was_training)
    return {
        "mlm_loss": loss_sum / max(predicted, 1),
        "mlm_accuracy": correct / max(predicted, 1),
        **(
            {"masked_accuracy": masked_correct / masked, "masked_majority": masked_counts.max().item() / masked}
            if masked
            else {}
        ),
        "nsp_accuracy": nsp_correct / max(n, 1),
        "eval_instances": n,
    }


def _positions_seen(cfg: PretrainConfig, max_seq_length: int) -> int:
    """The longest sequence the model has been pre-trained on, this run and the one it continues from: position
    embeddings beyond it are still the random initial ones (`finetune` notes it)."""
    return max(max_seq_length, read_pretraining_record(cfg.model).get("max_seq_length") or 0)


def _note_dropout_change(cfg: PretrainConfig, source: Path | None) -> None:
    """Say so when this run's dropout differs from the one the model (or checkpoint) was pre-trained with."""
    before = read_pretraining_record(source).get("dropout")
    if before is not None and before != cfg.dropout:
        now = "the config's" if cfg.dropout is None else str(cfg.dropout)
        print(f"note: {source} was pre-trained with dropout {before}; this run uses {now} (--dropout sets it)")


def run_pretrain(cfg: PretrainConfig) -> dict[str, float]:
    """Pre-train; returns the final held-out metrics. The run directory gets checkpoints, metrics and a model."""
    out = Path(cfg.train.out_dir)
    if not cfg.resume and out.exists() and latest_checkpoint(out) is not None:
        raise BertkitError(f"{out} already has checkpoints: pass --resume to continue, or choose a new --out")
    manifest = read_manifest(cfg.data)
    seed = cfg.train.seed
    data = PretrainingData(cfg.data, "train", cfg.masking, seed)
    if len(data) == 0:
        raise BertkitError(f"{cfg.data} has no training instances")
    eval_data = (
        PretrainingData(cfg.data, "eval", cfg.masking, seed) if manifest["splits"]["eval"]["instances"] else None
    )
    tok = data.tokenizer
    torch.manual_seed(seed)
    model = build_model(
        cfg.model,
        tok.vocab_size,
        manifest["config"]["max_seq_length"],
        config_overrides=cfg.config_overrides(),
        dropout=cfg.dropout,
        mlm_weight=cfg.mlm_weight,
        nsp_weight=cfg.nsp_weight,
    )
    use_nsp = cfg.nsp_weight > 0

    def loader(epoch: int, start: int, rank: int, world: int):
        return torch.utils.data.DataLoader(
            data,
            batch_size=cfg.train.batch_size,
            sampler=EpochSampler(len(data), seed, epoch, start, rank, world),
            collate_fn=lambda items: collate(items, tok.pad_id),
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(seed),  # leaves the global RNG (dropout) untouched
            pin_memory=torch.cuda.is_available(),  # page-locked batches: asynchronous host-to-GPU copies
        )

    def save_extra(directory: Path) -> None:
        tok.save_pretrained(directory)
        summary = {"data": str(cfg.data), "model": cfg.model, "masking": asdict(cfg.masking)}
        summary.update(mlm_weight=cfg.mlm_weight, nsp_weight=cfg.nsp_weight, objective=cfg.objective)
        summary.update(dropout=cfg.dropout, init_range=cfg.init_range)  # the run's, None: the config's
        summary["max_seq_length"] = _positions_seen(cfg, manifest["config"]["max_seq_length"])
        (directory / PRETRAINING_RECORD).write_text(json.dumps(summary, indent=2) + "\n")

    trainer = Trainer(
        model,
        cfg.train,
        loader_fn=loader,
        loss_fn=lambda m, b: pretraining_loss(m, b, use_nsp, cfg.objective),
        samples_per_epoch=len(data),
        eval_fn=(
            (lambda m: evaluate_pretraining(m, eval_data, max_instances=cfg.eval_instances, objective=cfg.objective))
            if eval_data
            else None
        ),
        save_extra=save_extra,
        find_unused_parameters=not use_nsp,  # without NSP the pooler and NSP head get no gradient
    )
    if cfg.resume and not trainer.resume():
        print(f"nothing to resume in {out}: starting from step 0")
    _note_dropout_change(cfg, latest_checkpoint(out) if cfg.resume else Path(cfg.model))
    metrics = trainer.train()
    trainer.save_model_dir(out / "model")
    if trainer.is_main:
        save_extra(out / "model")
    return metrics
