"""Single-sentence (`cls`) and sentence-pair (`pair`) classification from the pooled [CLS] vector; regression
(one output, MSE) when the labels are decimal numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bertkit.data.tasks import TextExample, read_classification
from bertkit.errors import BertkitError
from bertkit.metrics import accuracy, macro_f1
from bertkit.tasks.base import Feature, Task, run_model, text_field
from bertkit.tokenizer import Tokenizer

REGRESSION = "__regression__"


def is_regression(labels: Sequence[str]) -> bool:
    """True when the labels are numbers, some written as decimals, with more than two distinct values."""
    try:
        values = [float(x) for x in labels]
    except ValueError:
        return False
    return any(("." in x or "e" in x.lower()) for x in labels) and len(set(values)) > 2


class ClassificationTask(Task):
    """Single-sentence classification (`cls`) from the pooled [CLS] vector; regression on decimal labels."""

    name = "cls"
    main_metric = "accuracy"
    model_name = "cls"
    pair = False

    def read(self, path: str | Path, labelled: bool = True) -> list[TextExample]:
        """Rows read by `read_classification`; a pair task requires `text_b` in every row."""
        examples = read_classification(path, require_label=labelled)
        for ex in examples:
            if self.pair and ex.text_b is None:
                raise BertkitError(f"{path}:{ex.line}: a pair task needs text_a and text_b columns")
        return examples

    def from_json(self, row: dict, n: int = 0) -> TextExample:
        """{"text"} (or {"text_a"}); a pair task also needs {"text_b"}."""
        text_a = text_field(row, "text_a", alternative="text")
        return TextExample(text_a, text_field(row, "text_b") if self.pair else None, None, n)

    def labels(self, examples: Sequence[TextExample]) -> list[str]:
        """Labels sorted by (length, text), or [REGRESSION] for decimal labels; one label is an error."""
        values = [ex.label for ex in examples if ex.label is not None]
        if is_regression(values):
            return [REGRESSION]
        labels = sorted(set(values), key=lambda x: (len(x), x))
        if len(labels) < 2:
            raise BertkitError(f"the training data has a single label {labels}: nothing to classify")
        return labels

    def check_labels(self, examples: Sequence[TextExample], label2id: dict[str, int], path) -> None:
        if REGRESSION in label2id:
            return
        for ex in examples:
            if ex.label is not None and ex.label not in label2id:
                known = list(label2id)
                raise BertkitError(f"{path}:{ex.line}: label {ex.label!r} was not in the training data {known}")

    def features(self, examples, tok: Tokenizer, label2id, train: bool) -> list[Feature]:
        encs = tok.encode_batch(
            [ex.text_a for ex in examples],
            [ex.text_b or "" for ex in examples] if self.pair else None,
            max_length=self.settings.max_seq_length,
        )
        regression = label2id is not None and REGRESSION in label2id
        out = []
        for ex, enc in zip(examples, encs, strict=True):
            f: Feature = {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids}
            if ex.label is not None and label2id is not None:
                f["label"] = float(ex.label) if regression else label2id[ex.label]
            out.append(f)
        return out

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "token_type_ids", "attention_mask")
        out = {k: batch[k] for k in keys}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def _scores(self, model, tok, features):
        return torch.stack(run_model(model, self, features, tok.pad_id))  # (N, C)

    def evaluate(self, model, tok, examples, features, id2label) -> dict:
        """Accuracy, macro-F1 and the example count; MSE and Pearson r for regression."""
        logits = self._scores(model, tok, features)
        if id2label[0] == REGRESSION:
            pred = logits[:, 0]
            gold = torch.tensor([float(ex.label) for ex in examples])
            mse = float(((pred - gold) ** 2).mean())
            pearson = float(torch.corrcoef(torch.stack([pred, gold]))[0, 1])
            return {"mse": mse, "pearson": pearson}
        pred = [id2label[i] for i in logits.argmax(-1).tolist()]
        gold = [ex.label for ex in examples]
        return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold), "examples": len(gold)}

    def predict(self, model, tok, examples, features, id2label) -> list[dict]:
        """The best `label` and every label's `probabilities` per example; a `score` for regression."""
        logits = self._scores(model, tok, features)
        if id2label[0] == REGRESSION:
            return [{"score": float(x)} for x in logits[:, 0]]
        probs = logits.softmax(-1)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": id2label[best], "probabilities": {id2label[i]: p for i, p in enumerate(row)}})
        return out


class PairClassificationTask(ClassificationTask):
    """Sentence-pair classification (`pair`): `text_a` as segment A, `text_b` as segment B."""

    name = "pair"
    model_name = "pair"
    pair = True
