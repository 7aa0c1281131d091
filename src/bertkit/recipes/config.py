"""The recipes' settings, each stated once: the CLI's flags, defaults and help texts are generated from these fields
(bertkit.options). Light on purpose (no torch), so that `bertkit --help` answers at once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from bertkit.config import PRESETS
from bertkit.data.masking import MaskingConfig
from bertkit.options import (
    DROPOUT,
    NON_NEGATIVE,
    NON_NEGATIVE_NUMBER,
    POSITIVE,
    POSITIVE_NUMBER,
    SEED,
    check_values,
    numbers,
    option,
)
from bertkit.tasks.settings import TASK_NAMES, TaskSettings
from bertkit.train.config import TrainConfig

OBJECTIVES = ("mlm", "l2r", "r2l")


@dataclass
class PretrainConfig:
    """Settings of one pre-training run (`bertkit pretrain`): data, model, training loop, masking, loss weights,
    objective."""

    data: str = option(metavar="DATA_DIR", help="from bertkit prepare")
    model: str = option(
        "mini", metavar="PRESET|CONFIG.json|DIR",
        help=f"a size preset ({', '.join(PRESETS)}), a config.json, or a model directory to continue from (default: "
        "the %(default)s preset)",
    )  # fmt: skip
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/pretrain"))
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    mlm_weight: float = option(1.0, type=NON_NEGATIVE_NUMBER, help="masked LM's share of the loss")
    nsp_weight: float = option(
        1.0, type=NON_NEGATIVE_NUMBER,
        help="NSP's share of the loss (the paper: 1; 0 switches NSP off). On short CPU budgets 0.1 let small models' "
        "masked LM leave its plateau, which it did not at 1, while NSP still learned "
        "(benchmarks/results/nsp_plateau.json)",
    )  # fmt: skip
    eval_instances: int = option(2000, type=POSITIVE, help="held-out instances per evaluation")
    num_workers: int = option(  # masking happens in them
        1, flag="--workers", type=NON_NEGATIVE, help="data-loading processes (0: in this one)"
    )
    resume: bool = option(False, help="continue from the newest checkpoint in RUN_DIR")
    overwrite: bool = option(
        False,
        help="start again in a RUN_DIR that holds an earlier run (only the files pretrain writes are removed; a file "
        "of yours inside model/ or a checkpoint is refused, never removed)",
    )
    dropout: float | None = option(
        None, type=DROPOUT,
        help="dropout during this run (0 suits short runs); the saved config keeps the model's own (presets: 0.1), "
        "which fine-tuning uses",
    )  # fmt: skip
    objective: str = option(
        "mlm", choices=OBJECTIVES,
        help="mlm: BERT's masked LM; l2r / r2l: a causal next-token language model (the ablation baseline)",
    )  # fmt: skip
    init_range: float | None = option(
        None, type=POSITIVE_NUMBER,
        help="std of a new model's initial weights (config initializer_range; presets: 0.02)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_values(self)  # the objective among OBJECTIVES, too

    def config_overrides(self) -> dict:
        """Every model-config key this run sets: causal attention for l2r/r2l, the init scale (not dropout: that
        is a setting of the run, applied by `build_model`, so the saved config keeps the fine-tuning dropout)."""
        over: dict = {}
        if self.objective != "mlm":
            over["is_decoder"] = True
        if self.init_range is not None:
            over["initializer_range"] = self.init_range
        return over


# Fine-tuning's peak learning rate when none is given, by the model's size: BERT's 5e-5 suits BERT-base and models
# like MiniLM, but left bertkit's small pre-trained models near the majority class, where 1e-3 did best of the rates
# tried, for both the pre-trained and the random-init arm and both quickstart tasks in all but one case
# (benchmarks/results/quickstart_lr_check.json, the tiny preset, hidden size 128; benchmarks/README.md gives its
# commands).
BERT_LEARNING_RATE = 5e-5
SMALL_MODEL_LEARNING_RATE = 1e-3
SMALL_MODEL_HIDDEN = 256  # up to this hidden size (bertkit's tiny and mini presets)


def finetune_learning_rate(hidden_size: int) -> tuple[float, str]:
    """The default fine-tuning learning rate for a model of `hidden_size`, and why, in words."""
    if hidden_size <= SMALL_MODEL_HIDDEN:
        return SMALL_MODEL_LEARNING_RATE, (
            f"for a small model (hidden size {hidden_size} <= {SMALL_MODEL_HIDDEN}), BERT's {BERT_LEARNING_RATE:g} "
            "trains too slowly"
        )
    return BERT_LEARNING_RATE, f"BERT's, for a model of hidden size {hidden_size}"


def finetune_training(**changes: Any) -> TrainConfig:
    """Fine-tuning's training settings: BERT's defaults (batch 32, 10% warm-up) with `changes`. Unless set, the
    peak learning rate comes from the model's size (`finetune_learning_rate`), the steps from the epochs, the
    evaluation cadence from the epoch length, and the output folder from the run's output directory."""
    defaults = TrainConfig(out_dir="", max_steps=None, batch_size=32, learning_rate=None, warmup_ratio=0.1,
                           eval_every=None, save_every=None, log_every=20, seed=42)  # fmt: skip
    return replace(defaults, **changes)


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (`bertkit finetune`): task, model, data files, output, training."""

    task: str = option(
        choices=TASK_NAMES,
        help="cls: text -> label; pair: two texts -> label; regression: text (or two) -> a number; multilabel: "
        "text (or two) -> any number of labels (a|b|c, thresholds chosen on --dev); ner: a label per token (CoNLL); "
        "qa: answer span (SQuAD)",
    )
    model: str = option(metavar="DIR", help="a bertkit or Hugging Face BERT model directory")
    train_file: str = option(
        flag="--train", metavar="FILE",
        help="TSV/CSV/JSONL with a header line (text or text_a, text_b, label), CoNLL, or SQuAD JSON; .csv is read "
        "as comma-separated, .tsv as tab-separated; labels are read without surrounding white space ('1 ' is '1')",
    )  # fmt: skip
    out: str = option(metavar="DIR", help="the fine-tuned model directory")
    dev_file: str | None = option(
        None, flag="--dev", metavar="FILE", help="evaluated each epoch; the best model is kept (without it: the last)"
    )
    epochs: float = option(3.0, type=POSITIVE_NUMBER, help="passes over the training data")
    patience: int | None = option(
        None, type=POSITIVE, help="early stop after N evaluations without gain (default: none; needs --dev)"
    )
    max_train_examples: int | None = option(None, type=POSITIVE, help="train on the first N examples")
    seeds: int = option(
        1, type=POSITIVE,
        help="runs per learning rate, with seeds --seed, --seed + 1, ... (more than 1: as several --learning-rate "
        "values, the best run on --dev is kept)",
    )  # fmt: skip
    dropout: float | None = option(None, type=DROPOUT, help="override the model's dropout (BERT: 0.1)")
    resume: bool = option(False, help="continue from the newest checkpoint in --out")
    overwrite: bool = option(
        False,
        help="replace an earlier fine-tuned model in --out (only the files finetune writes are removed; a file of "
        "yours inside training/ is refused, never removed)",
    )
    train: TrainConfig = field(default_factory=finetune_training)
    settings: TaskSettings | None = None  # None: the task's defaults
    save_model: bool = True  # False: metrics only, no model directory or checkpoints (for many short runs)
    # False: the caller has said what the notes would (positions past the pre-training length start untrained,
    # inputs longer than max_seq_length are truncated), once for many runs: the quickstart
    notes: bool = True

    def __post_init__(self) -> None:
        check_values(self)


# How `bertkit finetune` words the training flags it takes from TrainConfig, where fine-tuning means more.
FINETUNE_TRAINING_FLAGS = {
    "max_steps": {"help": "overrides --epochs"},
    "batch_size": {"help": "examples per optimiser step"},
    "learning_rate": {
        "type": numbers(POSITIVE_NUMBER),
        "help": f"AdamW's peak rate, reached after warm-up, then decayed linearly to 0 (default: by the model's size, "
        f"{BERT_LEARNING_RATE:g} as BERT's, {SMALL_MODEL_LEARNING_RATE:g} up to hidden size {SMALL_MODEL_HIDDEN}, "
        "where bertkit's small pre-trained models did best; the run says which). Several, e.g. 5e-5,3e-5,2e-5 (the "
        "BERT paper's protocol): one run per rate (and per --seeds) in DIR/runs/, the best on --dev copied to DIR, "
        "all runs' scores in DIR/grid.md",
    },
    "warmup_ratio": {"help": "share of steps with a rising rate"},
    "eval_every": {"type": POSITIVE, "help": "steps (default: once per epoch)"},
    "save_every": {
        "type": POSITIVE,
        "help": "steps between the checkpoints --resume continues from (default: at each evaluation; a run stopped "
        "before its first checkpoint starts again)",
    },
    "seed": {"help": "head initialisation, data order, dropout"},
    "gradient_checkpointing": {},
}


@dataclass
class QuickstartConfig:
    """Settings of `bertkit quickstart`, the end-to-end demo on the bundled Chinese data."""

    out: str = option(
        "runs/quickstart", metavar="DIR",
        help="where everything is written; a re-run with the same --budget, --seed and --max-minutes reuses its "
        "finished stages",
    )  # fmt: skip
    budget: float = option(1.0, type=POSITIVE_NUMBER, help="scale the work (0.1 = a smoke run; use its own --out)")
    seed: int = option(0, type=SEED, help="every random choice of the run: data, initialisation, fine-tuning")
    max_minutes: float | None = option(
        None, type=POSITIVE_NUMBER,
        help="stop pre-training once it has run this long (default: no limit, all of the plan's steps, so the same "
        "budget and seed give the same table on any machine); when the limit cuts pre-training short, the results "
        "depend on the machine's speed and the table says so",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_values(self)
