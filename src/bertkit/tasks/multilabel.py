"""Multi-label classification (`multilabel`): a text (or text pair) -> any number of labels, from the pooled [CLS]
vector. One sigmoid per label, binary cross-entropy (transformers' `problem_type: "multi_label_classification"`);
a label is predicted when its probability passes its threshold, chosen on the dev set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bertkit.data.task_files import LABEL_SEPARATOR, TextExample, read_classification
from bertkit.errors import BertkitError
from bertkit.metrics import multilabel_scores
from bertkit.tasks.base import Feature, Inference, unseen_label
from bertkit.tasks.classify import PairsFromData, mark_truncated

DEFAULT_THRESHOLD = 0.5  # a label whose sigmoid passes one half, before any threshold is chosen on dev data
# The thresholds tried on dev: a coarse grid rather than every predicted probability, so that a label with a few
# dev examples does not get a threshold fitted to one of them.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def split_labels(label: str | None, where: str = "") -> list[str]:
    """`a|b|c` -> ["a", "b", "c"]; "" (or None) -> []. An empty part or a repeated label is an error."""
    if not label:
        return []
    parts = [part.strip() for part in label.split(LABEL_SEPARATOR)]
    if "" in parts or len(set(parts)) != len(parts):
        raise BertkitError(f"{where}: labels {label!r} must be distinct names separated by {LABEL_SEPARATOR!r}")
    return parts


def _label_f1(probs: torch.Tensor, gold: torch.Tensor, threshold: float) -> float:
    """F1 of the decisions `probs > threshold` against the 0/1 `gold` (both (N,) or (N, C) pooled)."""
    pred = probs > threshold
    tp = (pred & gold).sum().item()
    return 2 * tp / (pred.sum().item() + gold.sum().item()) if tp else 0.0


def best_threshold(probs: torch.Tensor, gold: torch.Tensor) -> float:
    """The threshold of THRESHOLD_GRID with the highest F1 of `probs > t` against `gold`; of equals, the nearest
    to DEFAULT_THRESHOLD (the grid's order otherwise)."""
    by_distance = sorted(THRESHOLD_GRID, key=lambda t: abs(t - DEFAULT_THRESHOLD))
    return max(by_distance, key=lambda t: _label_f1(probs, gold, t))


class MultiLabelTask(PairsFromData):
    """Multi-label classification: labels written `a|b|c` in the label column (a JSON list in JSON lines); an
    example may have none."""

    name = "multilabel"
    # Micro-F1 picks the best dev model: it weighs every (example, label) decision alike, so frequent labels count
    # most; macro-F1 (rare labels count as much) is reported beside it.
    main_metric = "micro_f1"
    curve_scores = ("micro_f1", "macro_f1", "accuracy", "exact_match")
    head = "labels"  # one sigmoid per label: a single-label classifier's softmax means something else
    problem_type = "multi_label_classification"

    def read(self, path: str | Path, labelled: bool = True) -> list[TextExample]:
        """Rows read by `read_classification` with label sets; a model trained on pairs needs `text_b`."""
        examples = read_classification(path, require_label=labelled, multilabel=True)
        for ex in examples:
            split_labels(ex.label, f"{path}:{ex.line}")
        self.check_pairs(examples, path)
        return examples

    def labels(self, examples: Sequence[TextExample]) -> list[str]:
        """Every label of the training examples, sorted. Also settles whether inputs are pairs."""
        self.settle_pairs(examples)
        labels = sorted({label for ex in examples for label in split_labels(ex.label)})
        if not labels:
            raise BertkitError("the training data has no labels at all: nothing to learn")
        return labels

    def check_labels(self, examples: Sequence[TextExample], label2id: dict[str, int], path: str | Path) -> None:
        for ex in examples:
            for label in split_labels(ex.label, f"{path}:{ex.line}"):
                if label not in label2id:
                    raise unseen_label(f"{path}:{ex.line}", label, list(label2id))

    def target(self, label: str, label2id: dict[str, int]) -> list[float]:
        """The label set as a 0/1 vector over the model's labels (BCE's target)."""
        on = set(split_labels(label))
        return [1.0 if name in on else 0.0 for name in label2id]

    def thresholds_of(self, id2label: dict[int, str]) -> torch.Tensor:
        """(C,) each label's threshold: its own when chosen, else the global one, else DEFAULT_THRESHOLD."""
        default = self.settings.threshold if self.settings.threshold is not None else DEFAULT_THRESHOLD
        own = self.settings.thresholds or {}
        return torch.tensor([own.get(id2label[i], default) for i in range(len(id2label))])

    def _probabilities(self, run: Inference, features: list[Feature]) -> torch.Tensor:
        return self._scores(run, features).float().sigmoid()  # (N, C)

    def calibrate(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> None:
        """Choose the thresholds on these (dev) examples: one per label maximising its F1 (the global one for a label
        with no positive example here), and a global one maximising micro-F1. Kept in the settings."""
        probs = self._probabilities(run, features)
        label2id = {v: k for k, v in run.id2label.items()}
        gold = torch.tensor([self.target(ex.label, label2id) for ex in examples]).bool()  # (N, C)
        threshold = best_threshold(probs, gold)
        own = {}
        for i, name in run.id2label.items():
            own[name] = best_threshold(probs[:, i], gold[:, i]) if gold[:, i].any() else threshold
        self.settings.threshold, self.settings.thresholds = threshold, own

    def _decide(
        self, probs: torch.Tensor, id2label: dict[int, str], thresholds: torch.Tensor | None = None
    ) -> list[list[str]]:
        """The labels of each row whose probability passes its threshold (the model's, unless given)."""
        above = probs > (self.thresholds_of(id2label) if thresholds is None else thresholds)
        return [[id2label[i] for i in row.nonzero().flatten().tolist()] for row in above]

    def evaluate(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> dict:
        """Micro-F1, macro-F1, example-based accuracy and exact match at the model's thresholds; micro-F1 at one
        half (`micro_f1_at_half`) beside them, since thresholds chosen on these same examples flatter the first."""
        probs = self._probabilities(run, features)
        gold = [split_labels(ex.label) for ex in examples]
        labels = [run.id2label[i] for i in range(len(run.id2label))]
        scores = multilabel_scores(self._decide(probs, run.id2label), gold, labels)
        half = self._decide(probs, run.id2label, torch.tensor(DEFAULT_THRESHOLD))
        scores["micro_f1_at_half"] = multilabel_scores(half, gold, labels)["micro_f1"]
        return scores

    def predict(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> list[dict]:
        """Per example: the `labels` whose probability passes their threshold, and every label's `probabilities`."""
        probs = self._probabilities(run, features)
        rows = [
            {"labels": chosen, "probabilities": {run.id2label[i]: p for i, p in enumerate(row)}}
            for chosen, row in zip(self._decide(probs, run.id2label), probs.tolist(), strict=True)
        ]
        return mark_truncated(rows, features)
