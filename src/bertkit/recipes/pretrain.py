"""Recipe: pre-train BERT from scratch (or continue) on a prepared data directory with masked LM + NSP.

`objective` "l2r" / "r2l" trains the same encoder as a left-to-right (or right-to-left) language model instead:
causal attention and a next-token loss through the same tied output layer (the baseline of the paper's
bidirectionality ablation). A right-to-left model reads every sequence reversed, in training and afterwards.
"""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bertkit.checkpoint import PRETRAINING_RECORD, read_pretraining_record, write_pretraining_record
from bertkit.config import PRESETS, BertConfig
from bertkit.constants import IGNORE_INDEX, INFERENCE_BATCH_SIZE
from bertkit.data.pretraining import PretrainingData, collate, nsp_notes, read_manifest
from bertkit.errors import BertkitError
from bertkit.files import (
    check_output_not_input,
    disk_full_as_error,
    output_lock,
    release_output_dir,
)
from bertkit.model import BertForPreTraining, encoder_layers, reverse_real_tokens, set_dropout
from bertkit.options import by_flag, check_config
from bertkit.progress import progress_iter
from bertkit.recipes.config import PretrainConfig
from bertkit.tokenizer import Tokenizer
from bertkit.train.config import TrainConfig
from bertkit.train.distributed import dist_info
from bertkit.train.loop import Trainer
from bertkit.train.metrics_log import METRICS_FILE, Curves, read_metrics_log
from bertkit.train.state import (
    CONTENTS,
    STALE_PATTERNS,
    TRAINER_OWNS,
    claim_run_dir,
    contents_digest,
    end_replacement,
    latest_checkpoint,
)


def check_vocabulary(model_dir: str | Path, data_tokenizer: Tokenizer, data: str | Path) -> None:
    """Refuse a model directory whose vocabulary is not the data's: the data's ids would name other tokens in the
    model. Equal sizes are not enough (two vocabularies learnt from one corpus, cased and uncased, differ in
    hundreds of places). A directory without a vocabulary (vocab.txt or tokenizer.json) can only be compared by size,
    which the caller does."""
    path = Path(model_dir)
    if not (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
        return
    model_vocab, data_vocab = Tokenizer.from_pretrained(path).vocab, data_tokenizer.vocab
    if model_vocab == data_vocab:
        return
    differ = [i for i in range(min(len(model_vocab), len(data_vocab))) if model_vocab[i] != data_vocab[i]]
    first = differ[0] if differ else min(len(model_vocab), len(data_vocab))
    example = (f"e.g. id {first} is {model_vocab[first]!r} there and {data_vocab[first]!r} in the data"
               if differ else f"{len(model_vocab)} tokens there, {len(data_vocab)} in the data")  # fmt: skip
    raise BertkitError(
        f"{path}'s vocabulary is not the one {data} was prepared with ({example}): the model would read other "
        f"tokens than the data holds; prepare the data with the model's tokenizer (bertkit prepare --tokenizer {path})"
    )


def build_model(
    spec: str,
    tokenizer: Tokenizer,
    data: str | Path,
    max_seq_length: int,
    config_overrides: dict | None = None,
    dropout: float | None = None,
    **kwargs,
) -> BertForPreTraining:
    """A model from a preset name, a config.json or a model directory; its vocabulary must be `tokenizer`'s, the
    one `data` was prepared with.

    `config_overrides` (config.json keys) apply on top of whichever config the model comes with; `dropout`, when
    given, replaces the model's dropout for this run without changing its config (see `set_dropout`)."""
    path = Path(spec)
    over = config_overrides or {}
    vocab_size = tokenizer.vocab_size
    if spec in PRESETS:
        model = BertForPreTraining(BertConfig.preset(spec, vocab_size=vocab_size, **over), **kwargs)
    elif path.is_dir():
        check_vocabulary(path, tokenizer, data)
        model = BertForPreTraining.from_pretrained(path, config=replace(BertConfig.load(path), **over), **kwargs)
        model.train()
        if model.fresh_parameters:  # e.g. continuing from an encoder-only directory: its heads start at random
            print(f"note: not in {path}, so initialised at random: {', '.join(model.fresh_parameters)}")
    elif path.suffix == ".json" and path.is_file():
        model = BertForPreTraining(replace(BertConfig.load(path), **over), **kwargs)
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
) -> tuple[torch.Tensor, dict[str, float]]:
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
    batch_size: int = INFERENCE_BATCH_SIZE,
    max_instances: int | None = None,
    objective: str = "mlm",
    nsp: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    """Held-out MLM loss and accuracy (over the chosen tokens) and, with `nsp` (a model whose NSP head was
    trained), NSP accuracy, with one fixed mask.

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
    for start in progress_iter(range(0, n, batch_size), progress, desc="evaluate", unit="batch"):
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
        **({"nsp_accuracy": nsp_correct / max(n, 1)} if nsp else {}),
        "eval_instances": n,
    }


# What curves.png shows for a pre-training run: its losses, and its held-out accuracies in the order drawn.
PRETRAINING_CURVES = Curves(
    train_losses=("loss", "mlm_loss", "nsp_loss"),
    held_out_losses=("mlm_loss",),
    held_out_scores=("masked_accuracy", "mlm_accuracy", "nsp_accuracy"),
    scores_label="accuracy",
)


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


# What a run killed while writing leaves: removed whenever a run starts or resumes.
MODEL_DIR, MODEL_TMP = "model", ".tmp-model"  # the pre-trained model, and where it is written before it is moved in
PRETRAIN_STALE = (MODEL_TMP, *STALE_PATTERNS)
# Everything `pretrain` writes directly in its run directory: the only entries --overwrite removes.
PRETRAIN_OWNS = (*TRAINER_OWNS, MODEL_DIR, MODEL_TMP)


def _inputs(cfg: PretrainConfig, out: Path) -> list[Path]:
    """What the run reads and its output must not hold: the data directory, and a model directory to continue
    from. A config file lying directly in the run directory is allowed (the experiments keep an encoder's config
    beside its run): it is read once, before anything is written, and pretrain writes no .json file there."""
    inputs = [Path(cfg.data)]
    model = Path(cfg.model)
    if model.is_dir() or (model.is_file() and model.resolve().parent != out.resolve()):
        inputs.append(model)
    return inputs


def _check_training_split(data_dir: str, manifest: dict) -> None:
    """A prepared directory without training instances (`prepare --eval-fraction 1` makes evaluation-only ones)
    is refused before anything is read or written."""
    splits = manifest.get("splits", {})
    train = splits.get("train", {}).get("instances", 0)
    held_out = splits.get("eval", {}).get("instances", 0)
    if train == 0 and held_out:
        raise BertkitError(
            f"{data_dir} holds no training data, only a held-out split of {held_out:,} instances (an evaluation-only "
            "directory, as prepare --eval-fraction 1 makes): pre-train on a directory prepared with an "
            "--eval-fraction below 1, and use this one with bertkit evaluate"
        )
    if train == 0:
        raise BertkitError(f"{data_dir} has no training instances: prepare it again from a non-empty corpus")


def _claim_run_dir(cfg: PretrainConfig, out: Path) -> bool:
    """Make `out` this run's directory (see `bertkit.train.state.claim_run_dir`); True when there is a checkpoint
    to resume from."""
    return claim_run_dir(
        out, out, PRETRAIN_OWNS, PRETRAIN_STALE, command="pretrain", inputs=_inputs(cfg, out),
        overwrite=cfg.overwrite, resume=cfg.resume, what="pre-training run",
        # Written only by pre-training: runs of a bertkit from before the owner mark are recognised by these.
        is_own_output=latest_checkpoint(out) is not None or (out / MODEL_DIR / PRETRAINING_RECORD).is_file(),
        finished=lambda: "it holds a finished model (model/) but no checkpoint; pass --overwrite to train again (it "
        "replaces model/), or choose a new --out" if (out / MODEL_DIR).is_dir() else None,
    )  # fmt: skip


def _last_train_loss(metrics: Path) -> float | None:
    """The training loss of the last logged step in a metrics.jsonl, or None."""
    rows = read_metrics_log(metrics)
    losses = [r["loss"] for r in rows if r.get("split", "train") == "train" and "loss" in r]
    return losses[-1] if losses else None


def _identity(cfg: PretrainConfig) -> dict:
    """What decides a pre-training run beyond its training settings, by flag (see `Trainer`'s `identity`): a
    --resume with other data (or data prepared again from another corpus), another model or other masking or loss
    settings is refused. Paths are absolute, so a resume from another folder compares the same files; --max-steps
    may change (a run continued further)."""
    model = os.path.abspath(cfg.model) if Path(cfg.model).exists() else cfg.model  # a preset is a name
    return {
        "--data": os.path.abspath(cfg.data),
        "--model": model,
        **by_flag(cfg, ("mlm_weight", "nsp_weight", "objective", "dropout", "init_range")),
        **by_flag(cfg.masking),
        CONTENTS + "--data": contents_digest(cfg.data),  # last: a changed setting says more than changed data
    }


def run_pretrain(cfg: PretrainConfig) -> dict[str, float]:
    """Pre-train; returns the final held-out metrics (without a held-out split: the steps and the last training
    loss). The run directory gets checkpoints, metrics and a model; no other bertkit process writes into it
    meanwhile."""
    check_config(cfg, PretrainConfig)
    for name in ("max_steps", "learning_rate"):  # None lets a recipe choose; pre-training has no rule to choose by
        if getattr(cfg.train, name) is None:
            raise BertkitError(f"train.{name} must be given for pre-training (TrainConfig's default is "
                               f"{getattr(TrainConfig(), name)})")  # fmt: skip
    with output_lock(cfg.train.out_dir, "pretrain") if dist_info()[0] == 0 else nullcontext():
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> dict[str, float]:
    out = Path(cfg.train.out_dir)
    manifest = read_manifest(cfg.data)
    _check_training_split(cfg.data, manifest)
    cfg = replace(cfg, masking=cfg.masking.for_length(manifest["config"]["max_seq_length"]))  # recorded as used
    if not manifest["config"].get("nsp", True) and cfg.nsp_weight > 0:  # every B follows its A: nothing to learn
        print(f"note: {cfg.data} was prepared with --no-nsp: this run trains masked LM alone (--nsp-weight 0)")
        cfg = replace(cfg, nsp_weight=0.0)
    for note in nsp_notes(manifest, cfg.data) if cfg.nsp_weight > 0 else []:
        print(note)
    if manifest["config"].get("whole_word_mask") and not cfg.masking.whole_word:
        print(f"note: {cfg.data} was prepared for whole-word masking, and this run masks single tokens (pass "
              "--whole-word-mask to mask whole words)")  # fmt: skip
    check_output_not_input(out, _inputs(cfg, out))  # at once; the rest of the claim once nothing can fail first
    seed = cfg.train.seed
    data = PretrainingData(cfg.data, "train", cfg.masking, seed)
    if len(data) == 0:
        raise BertkitError(f"{cfg.data} has no training instances")
    eval_data = (
        PretrainingData(cfg.data, "eval", cfg.masking, seed) if manifest["splits"]["eval"]["instances"] else None
    )
    if eval_data is None:
        print(
            f"note: {cfg.data} has no held-out split (its corpus was too small to hold a document out): no held-out "
            "evaluation; the training loss is reported instead"
        )
    tok = data.tokenizer
    torch.manual_seed(seed)
    model = build_model(
        cfg.model,
        tok,
        cfg.data,
        manifest["config"]["max_seq_length"],
        config_overrides=cfg.config_overrides(),
        dropout=cfg.dropout,
        mlm_weight=cfg.mlm_weight,
        nsp_weight=cfg.nsp_weight,
    )
    use_nsp = cfg.nsp_weight > 0

    def save_extra(directory: Path) -> None:
        tok.save_pretrained(directory)
        summary = {"data": str(cfg.data), "model": cfg.model, "masking": asdict(cfg.masking)}
        summary.update(mlm_weight=cfg.mlm_weight, nsp_weight=cfg.nsp_weight, objective=cfg.objective)
        summary.update(dropout=cfg.dropout, init_range=cfg.init_range)  # the run's, None: the config's
        summary["max_seq_length"] = _positions_seen(cfg, manifest["config"]["max_seq_length"])
        write_pretraining_record(directory, summary)

    out_existed = out.exists()
    resuming = _claim_run_dir(cfg, out)
    trainer = Trainer.from_dataset(
        model,
        cfg.train,
        data,
        collate_fn=lambda items: collate(items, tok.pad_id),
        loss_fn=lambda m, b: pretraining_loss(m, b, use_nsp, cfg.objective),
        num_workers=cfg.num_workers,
        eval_fn=(
            (
                lambda m: evaluate_pretraining(
                    m, eval_data, INFERENCE_BATCH_SIZE, cfg.eval_instances, cfg.objective, use_nsp
                )
            )
            if eval_data
            else None
        ),
        save_extra=save_extra,
        find_unused_parameters=not use_nsp,  # without NSP the pooler and NSP head get no gradient
        bar_metric=("held-out MLM acc", "mlm_accuracy"),
        shard_units=encoder_layers,
        curves=PRETRAINING_CURVES,
        identity=_identity(cfg),
    )
    if resuming:
        trainer.resume()
    _note_dropout_change(cfg, latest_checkpoint(out) if resuming else Path(cfg.model))
    trainer.after_checkpoint = lambda: end_replacement(out, PRETRAIN_OWNS, out, succeeded=True)
    model_dir, tmp = out / MODEL_DIR, out / MODEL_TMP
    try:
        metrics = trainer.train()
        # Written beside, then renamed: model/ is complete or absent (scripts skip the stage when its weights exist).
        if trainer.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        with disk_full_as_error(model_dir, "the checkpoints are intact; free some space, then run again with "
                                "--resume"):  # fmt: skip
            trainer.save_model_dir(tmp)
            if trainer.is_main:
                save_extra(tmp)
                shutil.rmtree(model_dir, ignore_errors=True)
                tmp.rename(model_dir)
    except BaseException as e:
        # Failed or interrupted before a first checkpoint: the earlier run --overwrite set aside comes back, or
        # (diverged, disk full, Ctrl-C) the run directory is left as this run found it: the same command starts
        # again.
        if trainer.is_main and not end_replacement(out, PRETRAIN_OWNS, out, succeeded=False):
            nothing = latest_checkpoint(out) is None and not model_dir.exists()
            if isinstance(e, (BertkitError, KeyboardInterrupt)) and not resuming and nothing:
                release_output_dir(out, PRETRAIN_OWNS, created=not out_existed)
        raise
    if trainer.is_main:
        end_replacement(out, PRETRAIN_OWNS, out, succeeded=True)
    trainer.close()
    if trainer.is_main:  # the end state in words; the CLI's last line is the metrics as JSON
        held_out = (
            f"held-out masked-LM accuracy {metrics['mlm_accuracy']:.3f}"
            if "mlm_accuracy" in metrics
            else "no held-out split to evaluate on"
        )
        steps = f"{trainer.state.step} of {cfg.train.max_steps}"
        print(f"pre-trained to step {steps} ({held_out}); model saved to {model_dir}")
    if eval_data is None:
        loss = _last_train_loss(out / METRICS_FILE)
        return {"steps": trainer.state.step, **({"train_loss": loss} if loss is not None else {}), "eval_instances": 0}
    return metrics
