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

from bertkit.checkpoint import claim_folder
from bertkit.data.bundled import write_bundled_tasks, write_peoples_daily_corpus
from bertkit.data.masking import MaskingConfig
from bertkit.data.prepare import PrepareConfig, prepare
from bertkit.errors import BertkitError
from bertkit.recipes.finetune import FinetuneConfig, ModelFactory, run_finetune
from bertkit.recipes.pretrain import PretrainConfig, run_pretrain
from bertkit.tasks.base import TaskSettings
from bertkit.tokenizer import Tokenizer
from bertkit.train.loop import TrainConfig, latest_checkpoint, read_metrics_log

# Corpus paragraphs used for pre-training; the NER sets come from the paragraphs after them.
CORPUS_PARAGRAPHS = 17_000
TASK_METRIC = {"cls": "accuracy", "pair": "accuracy", "qa": "f1", "ner": "f1"}
TASK_LABEL = {
    "cls": "review sentiment (cls)",
    "pair": "LCQMC question pairs (pair)",
    "qa": "CMRC 2018 (qa)",
    "ner": "People's Daily NER (ner)",
}


@dataclass
class Scale:
    """How big every arm and run is. `default` is what the committed reports use; `test` keeps the code alive."""

    name: str = "default"
    preset: str = "tiny"
    corpus_paragraphs: int = CORPUS_PARAGRAPHS
    vocab_size: int = 8000
    max_seq_length: int = 64
    # The quickstart's pre-training recipe: at this budget more, smaller steps and init std 0.05 reached a higher
    # held-out MLM accuracy than fewer large ones at BERT's 0.02 (benchmarks/results/pretrain_tiny_sweep.json).
    pretrain_steps: int = 4000
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    init_range: float = 0.05
    evals: int = 6  # held-out evaluations per pre-training run (the NSP-accuracy curve)
    train_examples: dict[str, int] = field(default_factory=lambda: {"cls": 1000, "pair": 4000, "qa": 1002, "ner": 1000})
    dev_examples: dict[str, int] = field(default_factory=lambda: {"cls": 1000, "pair": 1000, "qa": 200, "ner": 1000})
    epochs: dict[str, float] = field(default_factory=lambda: {"cls": 3, "pair": 2, "qa": 1, "ner": 5})
    seq_length: dict[str, int] = field(default_factory=lambda: {"cls": 64, "pair": 64, "qa": 256, "ner": 128})
    # The best of (2e-4, 5e-4, 1e-3) in 7 of 8 quickstart cases (cls and NER; quickstart_lr_check.json); not
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
    # NSP's share of the loss when `nsp`. The paper sums the two (weight 1); at this scale that kept the masked LM
    # on its plateau for all 4,000 steps, while at 0.1 it left it as early as with no NSP and NSP still learned
    # (benchmarks/results/nsp_plateau.json), so every NSP arm here uses 0.1, as the quickstart does.
    nsp_weight: float = 0.1
    max_grad_norm: float = 1.0  # gradient clipping; inf switches it off
    mask_frac: float = 0.8
    random_frac: float = 0.1
    layers: int | None = None  # encoder depth, when not the preset's
    steps_frac: float = 1.0  # share of the scale's pre-training steps

    @property
    def loss_nsp_weight(self) -> float:
        """The NSP weight pre-training uses: `nsp_weight`, or 0 without NSP."""
        return self.nsp_weight if self.nsp else 0.0


BERT = Arm("bert")  # MLM 80/10/10 + NSP: the paper's recipe (NSP weighted 0.1, above)
MLM_ONLY = Arm("mlm_no_nsp", nsp=False)


def default_data_dir() -> Path | None:
    """Where the shared benchmark data lives (`$BERTKIT_DATA`, else ../shared/data), or None."""
    env = os.environ.get("BERTKIT_DATA")
    for path in ([Path(env)] if env else []) + [Path.cwd().parent / "shared" / "data", Path("shared/data")]:
        if (path / "README.md").is_file():
            return path
    return None


class Workspace:
    """The folder all experiments of one scale share; see the module docstring."""

    def __init__(self, root: Path, scale: Scale, data_dir: Path | None = None, progress: bool = True):
        self.root = Path(root) / scale.name
        self.scale = scale
        self.data_dir = data_dir
        self.progress = progress
        self._claim_root()
        self._tasks: dict[str, tuple[Path, Path]] | None = None

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
        corpus = self.root / "corpus" / "peoples_daily_199801.txt"
        if not corpus.is_file():
            write_peoples_daily_corpus(corpus, max_paragraphs=self.scale.corpus_paragraphs)
        return [corpus, self.bundled()["reviews_unlabelled"]]

    def bundled(self) -> dict[str, Path]:
        """Paths of the bundled sentiment and NER sets and the unlabelled reviews, written on first use."""
        s = self.scale
        return write_bundled_tasks(
            self.root / "tasks", s.corpus_paragraphs, max(s.train_examples["cls"], s.train_examples["ner"]),
            max(s.dev_examples["cls"], s.dev_examples["ner"]), seed=0,
        )  # fmt: skip

    def tokenizer_dir(self) -> Path:
        """The WordPiece tokenizer directory, trained on `corpus()` unless it is already there."""
        path = self.root / "tokenizer"
        if not (path / "vocab.txt").is_file():
            tok = Tokenizer.train(self.corpus(), vocab_size=self.scale.vocab_size, show_progress=self.progress)
            tok.save_pretrained(path)
        return path

    def prepared(self) -> Path:
        """The prepared NSP pre-training data directory, built unless it already has a manifest."""
        path = self.root / "data"
        if not (path / "manifest.json").is_file():
            cfg = PrepareConfig(max_seq_length=self.scale.max_seq_length, seed=0)
            prepare(self.corpus(), self.tokenizer_dir(), path, cfg, overwrite=True, progress=self.progress)
        return path

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
        train = TrainConfig(
            out_dir=str(run), max_steps=steps, batch_size=s.pretrain_batch, learning_rate=s.pretrain_lr,
            warmup_ratio=0.06, eval_every=max(1, steps // s.evals), save_every=max(1, steps // 3), log_every=25,
            seed=seed, progress=self.progress, max_grad_norm=arm.max_grad_norm,
        )  # fmt: skip
        spec: str = s.preset
        if arm.layers is not None:  # a shallower encoder of the same width: a config file for build_model
            from bertkit.config import BertConfig

            cfg = BertConfig.preset(s.preset, vocab_size=Tokenizer.from_pretrained(self.tokenizer_dir()).vocab_size)
            cfg.num_hidden_layers = arm.layers
            spec = str(run / "encoder.config.json")
            cfg.save(spec)
        print(f"\n== pre-training arm {arm.name!r}, seed {seed} ({steps} steps)", flush=True)
        run_pretrain(
            PretrainConfig(
                data=str(self.prepared()), model=spec, train=train,
                masking=MaskingConfig(mask_frac=arm.mask_frac, random_frac=arm.random_frac),
                nsp_weight=arm.loss_nsp_weight, eval_instances=1000, dropout=0.0, init_range=s.init_range,
                objective=arm.objective,
                resume=latest_checkpoint(run) is not None, num_workers=0,
                overwrite=True,  # the folder also holds this arm's record (arm.json): not pretrain's to refuse
            )
        )  # fmt: skip
        return model

    def pretrain_evals(self, arm: Arm, seed: int = 0) -> list[dict]:
        """The held-out evaluation records in an arm's seed-`seed` `metrics.jsonl` ([] before it has run)."""
        path = self.root / "pretrain" / arm.name / f"seed{seed}" / "metrics.jsonl"
        return [r for r in read_metrics_log(path) if r.get("split") == "eval"]

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
                    task=task, model=str(model_dir), train=str(train), dev=str(dev), out=str(out),
                    epochs=s.epochs[task], batch_size=s.batch_size, learning_rate=learning_rate or s.finetune_lr,
                    max_train_examples=s.train_examples[task], seed=seed, dropout=dropout, settings=settings,
                    progress=self.progress, save_model=False, log_every=50,
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
        return done["dev"][TASK_METRIC[task]]

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
    from bertkit.model import TASK_MODELS

    def build(config, num_labels):
        return TASK_MODELS[task](config, num_labels=num_labels)

    return build


def probe_factory(model_dir: Path, task: str) -> ModelFactory:
    """A feature-based probe: the pre-trained encoder frozen, only the new output layer trained."""
    from bertkit.model import TASK_MODELS

    def build(config, num_labels):
        model = TASK_MODELS[task].from_pretrained(model_dir, config=config, num_labels=num_labels)
        for p in model.bert.parameters():
            p.requires_grad_(False)
        return model

    return build
