"""What every experiment shares: the data, the pre-training arms and the fine-tuning runs, each cached on disk.

One workspace folder holds the bundled pre-training corpus (People's Daily 1998-01 + unlabelled reviews, as the
quickstart uses), its vocabulary and NSP instances, one folder per pre-training arm and seed, and one
`metrics.json` per fine-tuning run. Seed s of an arm is its own pre-training run (initial weights, data order and
masks from s) and fine-tunes with seed s, so a score's spread over seeds covers pre-training as well as
fine-tuning. A run that has finished is never run again, so experiments share arms (the BERT baseline serves five
of them) and an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertkit.config import BertConfig
from bertkit.data.masking import MaskingConfig
from bertkit.errors import BertkitError
from bertkit.files import claim_folder
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import ModelFactory, run_finetune
from bertkit.recipes.small_scale import (
    CORPUS_PARAGRAPHS,
    NSP_WEIGHT,
    PretrainingPlan,
    SmallScalePipeline,
    held_out_evals,
)
from bertkit.tasks.registry import task_class
from bertkit.tasks.settings import TaskSettings
from bertkit.tokenizer import Tokenizer
from experiments import REPO

TASK_LABEL = {
    "cls": "review sentiment (cls)",
    "pair": "LCQMC question pairs (pair)",
    "qa": "CMRC 2018 (qa)",
    "ner": "People's Daily NER (ner)",
}


@dataclass
class Scale(PretrainingPlan):
    """How big every arm and run is. `default` is what the committed reports use; `test` keeps the code alive.
    Pre-training follows the small-scale pipeline's plan (`PretrainingPlan`), as the quickstart does."""

    name: str = "default"
    corpus_paragraphs: int = CORPUS_PARAGRAPHS
    evals: int = 6  # held-out evaluations per pre-training run (the NSP-accuracy curve)
    train_examples: dict[str, int] = field(default_factory=lambda: {"cls": 1000, "pair": 4000, "qa": 1002, "ner": 1000})
    dev_examples: dict[str, int] = field(default_factory=lambda: {"cls": 1000, "pair": 1000, "qa": 200, "ner": 1000})
    epochs: dict[str, float] = field(default_factory=lambda: {"cls": 3, "pair": 2, "qa": 1, "ner": 5})
    seq_length: dict[str, int] = field(default_factory=lambda: {"cls": 64, "pair": 64, "qa": 256, "ner": 128})
    # The quickstart's fine-tuning lr, chosen on its cls and NER runs (see QuickstartPlan.finetune_lrs); not
    # checked on pair and QA.
    finetune_lr: float = 1e-3
    probe_lr: float = 5e-3
    batch_size: int = 32
    seeds: int = 3
    w2v_epochs: int = 5


SCALES = {
    "default": Scale(),
    "test": Scale(
        name="test",
        corpus_paragraphs=600,
        vocab_size=1200,
        pretrain_steps=6,
        pretrain_batch=8,
        evals=2,
        train_examples={"cls": 60, "pair": 60, "qa": 20, "ner": 60},
        dev_examples={"cls": 40, "pair": 40, "qa": 10, "ner": 40},
        epochs={"cls": 1, "pair": 1, "qa": 1, "ner": 1},
        seq_length={"cls": 32, "pair": 32, "qa": 128, "ner": 64},
        seeds=2,
        w2v_epochs=1,
    ),
}


@dataclass(frozen=True)
class Arm:
    """One way of pre-training; everything not named here is the same for every arm."""

    name: str
    objective: str = "mlm"  # mlm | l2r | r2l
    nsp: bool = True
    nsp_weight: float = NSP_WEIGHT  # NSP's share of the loss when `nsp`: the small-scale pipeline's, not the paper's 1
    max_grad_norm: float = 1.0  # gradient clipping; inf switches it off
    mask_frac: float = 0.8
    random_frac: float = 0.1
    layers: int | None = None  # encoder depth, when not the preset's
    steps_frac: float = 1.0  # share of the scale's pre-training steps

    @property
    def loss_nsp_weight(self) -> float:
        """The NSP weight pre-training uses: `nsp_weight`, or 0 without NSP."""
        return self.nsp_weight if self.nsp else 0.0


BERT = Arm("bert")  # MLM 80/10/10 + NSP: the paper's recipe, NSP weighted as above
MLM_ONLY = Arm("mlm_no_nsp", nsp=False)


def default_data_dir() -> Path | None:
    """The shared data sets (LCQMC, CMRC 2018): `$BERTKIT_DATA`, else shared/data beside the checkout; None when
    neither holds them."""
    env = os.environ.get("BERTKIT_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if (path / "README.md").is_file() else None


class Workspace:
    """The folder all experiments of one scale share; see the module docstring."""

    def __init__(self, root: Path, scale: Scale, data_dir: Path | None = None, progress: bool = True):
        self.root = Path(root) / scale.name
        self.scale = scale
        self.data_dir = data_dir
        self.progress = progress
        self._claim_root()
        self._tasks: dict[str, tuple[Path, Path]] | None = None
        # The bundled sets are written at the larger of the cls and NER sizes; each task reads the first of them.
        self.pipeline = SmallScalePipeline(
            self.root, scale, max(scale.train_examples["cls"], scale.train_examples["ner"]),
            max(scale.dev_examples["cls"], scale.dev_examples["ner"]), scale.corpus_paragraphs, seed=0,
            progress=progress,
        )  # fmt: skip

    def _claim_root(self) -> None:
        """Record the scale in `root/scale.json`; refuse a folder whose cached arms and runs were made otherwise.

        Arms and runs are reused by their files alone, so another scale's (or an older bertkit's) would be mixed
        into the reports under this scale's description. More seeds reuse the cached ones: runs are per seed."""
        scale = {k: v for k, v in asdict(self.scale).items() if k != "seeds"}

        def refuse(before: dict | None) -> BertkitError:
            what = (
                f"holds arms and runs of another `{self.scale.name}` scale (see its scale.json)"
                if before is not None
                else "is not empty and has no scale.json (not an experiments workspace)"
            )
            return BertkitError(f"{self.root} {what}: choose another --work, or delete that folder to start over")

        claim_folder(self.root, "scale.json", scale, refuse)

    # ------------------------------------------------------------------------------------------------ data
    def corpus(self) -> list[Path]:
        """The pre-training corpus files (People's Daily, unlabelled reviews), written on first use."""
        return self.pipeline.corpus()

    def bundled(self) -> dict[str, Path]:
        """Paths of the bundled sentiment and NER sets and the unlabelled reviews, written on first use."""
        return self.pipeline.tasks()

    def tokenizer_dir(self) -> Path:
        """The WordPiece tokenizer directory, trained on `corpus()` unless it is already there."""
        return self.pipeline.tokenizer_dir()

    def prepared(self) -> Path:
        """The prepared NSP pre-training data directory, built unless it already has a manifest."""
        return self.pipeline.prepared()

    def tasks(self) -> dict[str, tuple[Path, Path]]:
        """(train, dev) files per task family; pair and QA only when the shared data is there."""
        if self._tasks is None:
            b = self.bundled()
            tasks = {"cls": (b["sentiment_train"], b["sentiment_dev"]), "ner": (b["ner_train"], b["ner_dev"])}
            if self.data_dir is not None:
                tasks["pair"] = self._lcqmc()
                tasks["qa"] = self._cmrc()
            self._tasks = tasks
        return self._tasks

    def _lcqmc(self) -> tuple[Path, Path]:
        """LCQMC has no train split here: its dev set (8,802 pairs), shuffled, is split into train and dev."""
        train, dev = self.root / "tasks" / "lcqmc_train.tsv", self.root / "tasks" / "lcqmc_dev.tsv"
        if not dev.is_file():
            lines = (self.data_dir / "lcqmc" / "dev.tsv").read_text(encoding="utf-8").splitlines()
            header, rows = lines[0], lines[1:]
            random.Random(0).shuffle(rows)
            n_dev, n_train = self.scale.dev_examples["pair"], self.scale.train_examples["pair"]
            dev.write_text("\n".join([header, *rows[:n_dev]]) + "\n", encoding="utf-8")
            train.write_text("\n".join([header, *rows[n_dev : n_dev + n_train]]) + "\n", encoding="utf-8")
        return train, dev

    def _cmrc(self) -> tuple[Path, Path]:
        """CMRC 2018: its train file (the 1,002-question trial set) and the first dev articles."""
        train, dev = self.root / "tasks" / "cmrc_train.json", self.root / "tasks" / "cmrc_dev.json"
        if not dev.is_file():
            for src, dst, limit in (
                ("train.json", train, self.scale.train_examples["qa"]),
                ("dev.json", dev, self.scale.dev_examples["qa"]),
            ):
                data = json.loads((self.data_dir / "cmrc2018" / src).read_text(encoding="utf-8"))
                kept, n = [], 0
                for article in data["data"]:
                    if n >= limit:
                        break
                    kept.append(article)
                    n += sum(len(p["qas"]) for p in article["paragraphs"])
                dst.write_text(json.dumps({"version": data.get("version", ""), "data": kept}, ensure_ascii=False))
        return train, dev

    # ---------------------------------------------------------------------------------------------- arms
    def pretrain(self, arm: Arm, seed: int = 0) -> Path:
        """The model directory of a pre-training arm's seed-`seed` run, trained now unless it is already there."""
        s = self.scale
        run = self.root / "pretrain" / arm.name / f"seed{seed}"
        model = run / "model"
        if (model / "model.safetensors").is_file():
            return model

        def refuse(before: dict | None) -> BertkitError:
            return BertkitError(
                f"{run} holds a pre-training run of another arm definition ({before}); this bertkit's arm "
                f"{arm.name!r} is {asdict(arm)}: choose another --work, or delete that folder to retrain it"
            )

        claim_folder(run, "arm.json", {**asdict(arm), "seed": seed}, refuse)
        steps = max(2, round(s.pretrain_steps * arm.steps_frac))
        spec = None
        if arm.layers is not None:  # a shallower encoder of the same width: a config file for build_model
            vocab_size = Tokenizer.from_pretrained(self.tokenizer_dir()).vocab_size
            spec = str(run / "encoder.config.json")
            BertConfig.preset(s.preset, vocab_size=vocab_size, num_hidden_layers=arm.layers).save(spec)
        print(f"\n== pre-training arm {arm.name!r}, seed {seed} ({steps} steps)", flush=True)
        return self.pipeline.pretrain(
            run, seed=seed, evals=s.evals, checkpoints=3, nsp_weight=arm.loss_nsp_weight, steps=steps, model=spec,
            masking=MaskingConfig(mask_frac=arm.mask_frac, random_frac=arm.random_frac), objective=arm.objective,
            max_grad_norm=arm.max_grad_norm, num_workers=0,
            overwrite=True,  # the folder also holds this arm's record (arm.json): not pretrain's to refuse
        )  # fmt: skip

    def pretrain_evals(self, arm: Arm, seed: int = 0) -> list[dict]:
        """The held-out evaluation records in an arm's seed-`seed` `metrics.jsonl` ([] before it has run)."""
        return held_out_evals(self.root / "pretrain" / arm.name / f"seed{seed}")

    def last_evals(self, arm: Arm) -> list[dict]:
        """The last held-out evaluation of every seed's pre-training run that has one."""
        evals = (self.pretrain_evals(arm, seed) for seed in self.seeds())
        return [e[-1] for e in evals if e]

    # ------------------------------------------------------------------------------------------ fine-tuning
    def finetune(
        self,
        run_name: str,
        model_dir: Path,
        task: str,
        seed: int,
        factory: ModelFactory | None = None,
        learning_rate: float | None = None,
        dropout: float | None = None,
    ) -> float:
        """Fine-tune one (arm, task, seed) and return its best dev score (cached in `metrics.json`).

        `dropout` None uses the model config's: BERT's 0.1, since pre-training without dropout leaves the saved
        config's value alone."""
        s = self.scale
        out = self.root / "finetune" / run_name / task / f"seed{seed}"
        metrics = out / "metrics.json"
        if not metrics.is_file():
            train, dev = self.tasks()[task]
            settings = TaskSettings(max_seq_length=s.seq_length[task], relocate_answers=task == "qa")
            print(f"-- fine-tune {run_name} / {task} / seed {seed}", flush=True)
            if out.exists():  # an interrupted run: its checkpoints are not kept (save_model=False), start over
                import shutil

                shutil.rmtree(out)
            run_finetune(
                FinetuneConfig(
                    task=task, model=str(model_dir), train_file=str(train), dev_file=str(dev), out=str(out),
                    epochs=s.epochs[task], max_train_examples=s.train_examples[task], dropout=dropout,
                    settings=settings, save_model=False,
                    train=finetune_training(batch_size=s.batch_size, learning_rate=learning_rate or s.finetune_lr,
                                            seed=seed, progress=self.progress, log_every=50),
                ),
                model_factory=factory,
            )  # fmt: skip
        done = json.loads(metrics.read_text())
        # Runs are found by (name, task, seed) alone; one made from another model (an older workspace's single
        # seed-0 arm, say) must not stand in for this seed's.
        if Path(done["args"]["model"]).parts[-3:] != Path(model_dir).parts[-3:]:
            raise BertkitError(
                f"{out} was fine-tuned from {done['args']['model']}, not {model_dir} (a workspace of an older "
                "bertkit?): choose another --work, or delete that run to redo it"
            )
        return done["dev"][task_class(task).main_metric]

    def seeds(self) -> range:
        """The seeds, 0 to `scale.seeds` - 1: each one pre-training run per arm and one fine-tuning run per task."""
        return range(self.scale.seeds)

    def scores(
        self,
        run_name: str,
        task: str,
        model: Arm | Path,
        factory: Callable[[int], ModelFactory] | None = None,
        **kwargs,
    ) -> list[float]:
        """One arm's dev scores on one task, one per seed: seed s fine-tunes `model`'s seed-s pre-training (or
        `model` itself when it is a directory), with `factory(s)` building the model when given."""
        scores = []
        for seed in self.seeds():
            model_dir = self.pretrain(model, seed) if isinstance(model, Arm) else model
            scores.append(self.finetune(run_name, model_dir, task, seed, factory(seed) if factory else None, **kwargs))
        return scores


def fresh_model_factory(task: str) -> ModelFactory:
    """Random initialisation (seeded by the fine-tuning seed): the 'no pre-training' arm."""

    def build(config, num_labels):
        return task_class(task).model_class(config, num_labels=num_labels)

    return build


def probe_factory(model_dir: Path, task: str) -> ModelFactory:
    """A feature-based probe: the pre-trained encoder frozen, only the new output layer trained."""

    def build(config, num_labels):
        model = task_class(task).model_class.from_pretrained(model_dir, config=config, num_labels=num_labels)
        for p in model.bert.parameters():
            p.requires_grad_(False)
        return model

    return build
