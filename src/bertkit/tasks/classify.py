"""Single-sentence (`cls`) and sentence-pair (`pair`) classification from the pooled [CLS] vector, and regression
(`regression`: a text or text pair -> one number, MSE) from the same vector with one output."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from bertkit.data.task_files import TextExample, numbered_lines, read_classification
from bertkit.errors import BertkitError
from bertkit.metrics import accuracy, macro_f1, regression_scores
from bertkit.model import BertForSequenceClassification
from bertkit.tasks.base import Feature, Inference, Task, text_field, unseen_label, window_starts
from bertkit.tokenizer import Tokenizer

SCORE = "score"  # a regression's one output: its label name in config.json's id2label and its key in predictions


def as_number(label: str) -> float | None:
    """The label as a finite number, or None when it is not one."""
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class ClassificationTask(Task):
    """Single-sentence classification (`cls`) from the pooled [CLS] vector."""

    name = "cls"
    main_metric = "accuracy"
    curve_scores = ("accuracy", "macro_f1")
    model_class = BertForSequenceClassification
    head = "classes"
    example_class = TextExample
    input_schema = '{"text": "..."}'
    json_fields = ("text", "text_a", "text_b")  # text_b: refused, with the reason, by a model that reads one text
    pair = False

    def is_labelled(self, example: TextExample) -> bool:
        """Whether the example has its label."""
        return example.label is not None

    def read(self, path: str | Path, labelled: bool = True) -> list[TextExample]:
        """Rows read by `read_classification`; a pair task requires `text_b` in every row, a single-text one none."""
        examples = read_classification(path, require_label=labelled)
        for ex in examples:
            if self.pair and ex.text_b is None:
                raise BertkitError(f"{path}:{ex.line}: a pair task needs text_a and text_b columns")
        self.check_single(examples, path)
        return examples

    def check_single(self, examples: Sequence[TextExample], path: str | Path) -> None:
        """A BertkitError for a text_b given to a model that reads one text: it would be left out unread, and the
        answers would look as if it had counted."""
        for ex in examples:
            if self.pair is False and ex.text_b is not None:
                raise BertkitError(f"{path}:{ex.line}: {self._no_text_b()}; otherwise leave the text_b column out")

    def _no_text_b(self) -> str:
        how = (
            "with --task pair (a Hugging Face classifier trained on pairs: give it --task pair)"
            if self.name == "cls"
            else "on pairs"
        )
        return (
            f"a text_b, which this {self.name} model does not read (it reads one text): for text pairs fine-tune {how}"
        )

    def read_for_prediction(self, path: str | Path) -> list[TextExample]:
        """A TSV/CSV/JSON(L) file as `read` takes it, or plain lines: a text per line, or (for a model that reads
        pairs) text_a<TAB>text_b. A model that does not know whether it reads pairs takes a tab as the sign."""
        if Path(path).suffix.lower() in (".tsv", ".csv", ".jsonl", ".json"):
            return self.read(path, labelled=False)
        rows = []
        for n, line in numbered_lines(path):
            if not line.strip():
                continue
            tabs = line.count("\t")
            pair = self.pair if self.pair is not None else tabs > 0
            if tabs != (1 if pair else 0):  # text cut off at a tab, or an empty text_b, would be answered silently
                want = "text_a<TAB>text_b: one tab" if pair else "one text and no tab"
                raise BertkitError(
                    f"{path}:{n}: {tabs} tab(s); this {self.name} model reads {want} per line (or give a .tsv file "
                    "with a header naming its columns)"
                )
            a, _, b = line.partition("\t")
            rows.append(TextExample(a, b if pair else None, None, n))
        return rows

    def echo(self, example: TextExample) -> dict:
        """The line number and the text(s)."""
        if example.text_b is None:
            return {"line": example.line, "text": example.text_a}
        return {"line": example.line, "text_a": example.text_a, "text_b": example.text_b}

    def from_json(self, row: dict, n: int = 0) -> TextExample:
        """{"text"} (or {"text_a"}); a pair task also needs {"text_b"}, a single-text one refuses it."""
        text_a = text_field(row, "text_a", alternative="text")
        if self.pair is False and "text_b" in row:
            raise BertkitError(self._no_text_b())
        return TextExample(text_a, text_field(row, "text_b") if self.pair else None, None, n)

    def labels(self, examples: Sequence[TextExample]) -> list[str]:
        """Labels sorted by (length, text). One label is an error, and so are labels that are all numbers with some
        fractions (0.5): one class per distinct value is never what such data means."""
        labelled = [ex for ex in examples if ex.label is not None]
        values = [ex.label for ex in labelled]
        numbers = [as_number(v) for v in values]  # type: ignore[arg-type]
        spelling: dict[float, TextExample] = {}
        for ex, x in zip(labelled, numbers, strict=True):
            first = spelling.setdefault(x, ex) if x is not None else ex
            if first.label != ex.label:  # 1 and 1.0 (or 01, １) would be two classes of one value
                raise BertkitError(
                    f"labels {first.label!r} ({first.source}:{first.line}) and {ex.label!r} ({ex.source}:{ex.line}) "
                    "are one number written two ways, which would make two classes: write each label one way"
                )
        if numbers and None not in numbers:
            # Refused rather than switched to regression: the user named the task, a regression model answers in
            # another form ({"score"} instead of a label), and a stray 0.5 among 0/1 may be a data error instead.
            fraction = next((ex for ex, x in zip(labelled, numbers, strict=True) if not x.is_integer()), None)
            if fraction is not None:
                raise BertkitError(
                    f"labels are numbers with fractions ({fraction.label} at {fraction.source}:{fraction.line}), so "
                    f"classification would make one class per distinct value: pass --task regression to train a "
                    f"regression (MSE; dev metrics Pearson, Spearman, MSE), or make the labels whole numbers or names"
                )
        labels = sorted(set(values), key=lambda x: (len(x), x))  # type: ignore[arg-type]
        if len(labels) < 2:
            raise BertkitError(f"the training data has a single label {labels}: nothing to classify")
        return labels

    def check_labels(self, examples: Sequence[TextExample], label2id: dict[str, int], path: str | Path) -> None:
        for ex in examples:
            if ex.label is not None and ex.label not in label2id:
                raise unseen_label(f"{path}:{ex.line}", ex.label, list(label2id))

    def _encode(self, examples: Sequence[TextExample], tok: Tokenizer, pair: bool, truncation: bool = True):
        return tok.encode_batch(
            [ex.text_a for ex in examples],
            [ex.text_b or "" for ex in examples] if pair else None,
            max_length=self.settings.max_seq_length,
            truncation=truncation,
        )

    def encodings(self, examples: Sequence[TextExample], tok: Tokenizer, truncation: bool = True) -> list:
        """One encoding per example: segment B is `text_b` for a pair task."""
        return self._encode(examples, tok, self.pair, truncation)

    def features(
        self, examples: Sequence[TextExample], tok: Tokenizer, label2id: dict[str, int] | None, train: bool
    ) -> list[Feature]:
        """One feature per example; an example longer than `max_seq_length` is truncated (the tokenizer's rule for
        pairs: the longer text loses tokens first), or read in windows (`long_inputs="window"`), one feature each.
        `cut_inputs` says afterwards how many examples were longer."""
        full = self.encodings(examples, tok, truncation=False)
        long = [i for i, enc in enumerate(full) if len(enc) > self.settings.max_seq_length]
        self.cut_inputs = len(long)
        windows: dict[int, list[tuple[list[int], list[int]]]] = {}
        if self.settings.long_inputs == "window":
            windows = {i: self._windows(full[i], tok) for i in long}
        else:
            for i in long:
                full[i] = tok.truncate(full[i], self.settings.max_seq_length)
        out = []
        cut = set(long) - set(windows)
        for i, (ex, enc) in enumerate(zip(examples, full, strict=True)):
            for ids, types in windows.get(i) or [(enc.input_ids, enc.token_type_ids)]:
                f: Feature = {"input_ids": ids, "token_type_ids": types, "example": i}
                if i in cut:
                    f["truncated"] = True  # its answer says so: it is of the first max_seq_length tokens alone
                if ex.label is not None and label2id is not None:
                    f["label"] = self.target(ex.label, label2id)  # every window of a training example is one
                out.append(f)
        return out

    def _windows(self, enc, tok: Tokenizer) -> list[tuple[list[int], list[int]]]:
        """(input_ids, token_type_ids) of the windows over one encoding longer than `max_seq_length`. A single
        text is read in windows; of a pair, the shorter text stays whole (up to half the room) beside windows over
        the longer one, each in its own segment as before."""
        ids, n_a = enc.input_ids, enc.token_type_ids.count(0) - 2
        a, b = ids[1 : 1 + n_a], (ids[2 + n_a : -1] if len(ids) > n_a + 2 else None)
        limit, cls, sep = self.settings.max_seq_length, tok.cls_id, tok.sep_id
        if b is None:
            size = limit - 2
            return [
                ([cls, *part, sep], [0] * (len(part) + 2))
                for part in (a[s : s + size] for s in window_starts(len(a), size, self.window_stride(size)))
            ]
        room = limit - 3
        keep_a = len(a) <= len(b)
        fixed, slid = (a, b) if keep_a else (b, a)
        fixed = fixed[: room // 2]
        size = room - len(fixed)
        out = []
        for s in window_starts(len(slid), size, self.window_stride(size)):
            seg_a, seg_b = (fixed, slid[s : s + size]) if keep_a else (slid[s : s + size], fixed)
            out.append(([cls, *seg_a, sep, *seg_b, sep], [0] * (len(seg_a) + 2) + [1] * (len(seg_b) + 1)))
        return out

    def target(self, label: str, label2id: dict[str, int]) -> int | float:
        """The training target of a label: its class id."""
        return label2id[label]

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "token_type_ids", "attention_mask")
        out = {k: batch[k] for k in keys}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def _scores(self, run: Inference, features: list[Feature]) -> torch.Tensor:
        """(N, C) logits per example: the mean over its windows (an example that fits has one, its own logits)."""
        logits = run.logits(self, features)
        if not logits:
            return torch.zeros(0, 0)
        examples = torch.tensor([f["example"] for f in features])
        n = int(examples.max()) + 1
        total = torch.zeros(n, logits[0].shape[-1]).index_add_(0, examples, torch.stack(logits).float())
        return total / torch.bincount(examples, minlength=n)[:, None]

    def evaluate(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> dict:
        """Accuracy, macro-F1 and the example count."""
        logits = self._scores(run, features)
        pred = [run.id2label[i] for i in logits.argmax(-1).tolist()]
        gold = [ex.label for ex in examples]
        return {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold), "examples": len(gold)}

    def predict(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> list[dict]:
        """The best `label` and every label's `probabilities` per example (and `truncated`: true for one that was
        cut at max_seq_length)."""
        probs = self._scores(run, features).softmax(-1)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            labels = run.id2label
            out.append({"label": labels[best], "probabilities": {labels[i]: p for i, p in enumerate(row)}})
        return mark_truncated(out, features)


class PairClassificationTask(ClassificationTask):
    """Sentence-pair classification (`pair`): `text_a` as segment A, `text_b` as segment B."""

    name = "pair"
    input_schema = '{"text_a": "...", "text_b": "..."}'
    pair = True


class PairsFromData(ClassificationTask):
    """A family whose inputs are single texts or text pairs as its training data has them: that is learnt by
    `labels` and kept in the settings (`text_pair`), so a model trained on pairs asks for pairs when it predicts; a
    model from elsewhere (None) reads a pair wherever an input has text_b."""

    input_schema = '{"text": "..."}, or {"text_a": "...", "text_b": "..."} for a model trained on pairs'

    @property
    def pair(self) -> bool | None:  # type: ignore[override]
        return self.settings.text_pair

    def from_json(self, row: dict, n: int = 0) -> TextExample:
        """{"text"} (or {"text_a"}), and {"text_b"} for a model trained on pairs."""
        text_a = text_field(row, "text_a", alternative="text")
        if self.pair is False and "text_b" in row:
            raise BertkitError(self._no_text_b())
        pair = self.pair if self.pair is not None else "text_b" in row
        return TextExample(text_a, text_field(row, "text_b") if pair else None, None, n)

    def check_pairs(self, examples: Sequence[TextExample], path: str | Path) -> None:
        """A BertkitError for an example without text_b when the model reads pairs, or with one when it reads one
        text."""
        self.check_single(examples, path)
        for ex in examples:
            if self.pair and ex.text_b is None:
                raise BertkitError(f"{path}:{ex.line}: this model reads text pairs: give text_a and text_b")

    def settle_pairs(self, examples: Sequence[TextExample]) -> None:
        """Learn from training examples whether inputs are pairs: all with text_b, or none."""
        with_b = [ex.text_b is not None for ex in examples]
        if any(with_b) and not all(with_b):
            ex = examples[with_b.index(False)]
            raise BertkitError(f"{ex.source}:{ex.line}: no text_b, while other rows have one; give all or none")
        self.settings.text_pair = bool(examples) and all(with_b)

    def encodings(self, examples: Sequence[TextExample], tok: Tokenizer, truncation: bool = True) -> list:
        """Pairs when the model reads pairs; a model that does not know pairs the examples that have text_b."""
        if self.pair is not None:
            return self._encode(examples, tok, self.pair, truncation)
        out: list = [None] * len(examples)
        for pair in (False, True):
            idx = [i for i, ex in enumerate(examples) if (ex.text_b is not None) == pair]
            if not idx:
                continue
            for i, enc in zip(idx, self._encode([examples[i] for i in idx], tok, pair, truncation), strict=True):
                out[i] = enc
        return out


class RegressionTask(PairsFromData):
    """Regression (`regression`): a text, or a text pair (`text_a`, `text_b`), -> one number, trained with MSE."""

    name = "regression"
    # Pearson's r picks the best dev model: STS-B's convention (GLUE reports Pearson, then Spearman, for it; the
    # BERT paper's table gives Spearman). Both are in the metrics, with the MSE; a lower MSE is not the aim alone,
    # since predicting every target's mean scores well on MSE while ranking nothing.
    main_metric = "pearson"
    curve_scores = ("pearson", "spearman")
    head = "value"

    def read(self, path: str | Path, labelled: bool = True) -> list[TextExample]:
        """Rows read by `read_classification`; labels must be finite numbers; a pair model needs `text_b`."""
        examples = read_classification(path, require_label=labelled)
        for ex in examples:
            if labelled and as_number(ex.label) is None:  # type: ignore[arg-type]
                kind = "a finite number" if _is_float(ex.label) else "a number"  # type: ignore[arg-type]
                raise BertkitError(
                    f"{path}:{ex.line}: label {ex.label!r} is not {kind}; a regression needs a number in every row"
                )
        self.check_pairs(examples, path)
        return examples

    def labels(self, examples: Sequence[TextExample]) -> list[str]:
        """[SCORE]: one output. Also settles, from these training examples, whether inputs are pairs."""
        self.settle_pairs(examples)
        return [SCORE]

    def check_labels(self, examples: Sequence[TextExample], label2id: dict[str, int], path: str | Path) -> None:
        """Nothing to check: `read` has checked that every label is a number."""

    def target(self, label: str, label2id: dict[str, int]) -> float:
        """The label's number."""
        return float(label)

    def evaluate(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> dict:
        """Pearson, Spearman, MSE and the example count."""
        pred = self._scores(run, features)[:, 0].tolist()
        return regression_scores(pred, [float(ex.label) for ex in examples])

    def predict(self, run: Inference, examples: Sequence[TextExample], features: list[Feature]) -> list[dict]:
        """{"score": x} per example (and `truncated`: true for one that was cut at max_seq_length)."""
        return mark_truncated([{SCORE: x} for x in self._scores(run, features)[:, 0].tolist()], features)


def mark_truncated(rows: list[dict], features: Sequence[Feature]) -> list[dict]:
    """`rows` (one per example) with "truncated": true on those whose feature was cut at max_seq_length."""
    for i in {f["example"] for f in features if f.get("truncated")}:
        rows[i]["truncated"] = True
    return rows


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
