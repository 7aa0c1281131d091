"""A run's metrics: `metrics.jsonl` (one JSON object per line, with the step; "split": "eval" for evaluations), the
same figures in TensorBoard when it is installed, and `curves.png` drawn from the log at the end."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertkit.files import atomic_write, interrupts_deferred

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends records to `out/metrics.jsonl`, and to TensorBoard under `out/tensorboard` while it is open."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / METRICS_FILE
        self.tensorboard = None

    def open_tensorboard(self) -> None:
        """Mirror the records to TensorBoard from now on; nothing when tensorboard is not installed (it is
        optional: metrics.jsonl always has everything)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.tensorboard = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR))

    def write(self, step: int, record: dict[str, Any]) -> None:
        """Append `record` with its step; its numbers go to TensorBoard as "SPLIT/KEY" (split: train by default)."""
        record = {"step": step, **record}
        # Ctrl-C is held until the record is written. TensorBoard's writer hands records to its own thread through a
        # queue: an interrupt raised inside the queue's wake-up call lost that wake-up, and closing the writer then
        # waited for the thread's next timed flush, up to two minutes after Ctrl-C, before the command could exit.
        with interrupts_deferred():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.tensorboard is not None:
                prefix = record.get("split", "train")
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "step":
                        self.tensorboard.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        """Flush and close TensorBoard's writer (the JSON lines are written as they come)."""
        writer, self.tensorboard = self.tensorboard, None
        if writer is not None:
            with interrupts_deferred():  # as in `write`: closing goes through the same queue
                writer.close()

    def truncate(self, step: int) -> None:
        """Drop the records past `step` (a resumed run is about to log those steps again), atomically."""
        if not self.path.is_file():
            return
        keep = [json.dumps(r) for r in read_metrics_log(self.path) if r.get("step", 0) <= step]
        atomic_write(self.path, lambda t: Path(t).write_text("".join(x + "\n" for x in keep)))


def read_metrics_log(path: Path) -> list[dict]:
    """The records of a run's `metrics.jsonl` ([] when there is none). A line that is not a JSON object is passed
    over: a kill or a full disk can cut the last line short, and resuming must not fail on it."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass(frozen=True)
class Curves:
    """What `plot_metrics` draws: losses on the left (training and held-out), held-out scores on the right, in the
    order named. The caller names them (a task, pre-training): the trainer knows no metric by name. Scores lie
    between 0 and 1, or -1 and 1 (correlations); the axis reaches below 0 only when a score does."""

    train_losses: tuple[str, ...] = ("loss",)
    held_out_losses: tuple[str, ...] = ()
    held_out_scores: tuple[str, ...] = ()
    scores_label: str = "score"  # the right panel's axis


Lines = dict[str, list[tuple[int, float]]]  # label -> (step, value) points


def curve_points(records: list[dict], curves: Curves | None = None) -> tuple[Lines, Lines]:
    """The lines `plot_metrics` draws from a log's records, by label: losses (left panel), then held-out scores and
    correlations (right panel). A figure the log does not hold is left out, as are non-finite training losses."""
    curves = curves or Curves()
    train = [r for r in records if r.get("split", "train") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    losses: Lines = {}
    for key in curves.train_losses:
        pts = [(r["step"], r[key]) for r in train if key in r and math.isfinite(r[key])]
        if pts:
            losses[f"train {key}"] = pts
    for key in curves.held_out_losses:
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if pts:
            losses[f"held-out {key}"] = pts
    logged = {k for r in evals for k in r}
    scores = {
        f"held-out {k}": [(r["step"], r[k]) for r in evals if k in r] for k in curves.held_out_scores if k in logged
    }
    return losses, scores


def plot_metrics(metrics: Path, png: Path, curves: Curves | None = None) -> bool:
    """Draw `curves` from a metrics.jsonl into `png` (see `curve_points`); False when matplotlib is not installed.
    Without `curves`: the training loss."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    losses, scores = curve_points(read_metrics_log(metrics), curves)
    negative = any(v < 0 for pts in scores.values() for _, v in pts)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, pts in losses.items():
        ax1.plot(*zip(*pts, strict=True), *(["o-"] if label.startswith("held-out") else []), label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    for label, pts in scores.items():
        ax2.plot(*zip(*pts, strict=True), "o-", label=label)
    ax2.set_xlabel("step")
    ax2.set_ylabel(curves.scores_label if curves else Curves.scores_label)
    ax2.set_ylim(-1 if negative else 0, 1)
    if scores:
        ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True
