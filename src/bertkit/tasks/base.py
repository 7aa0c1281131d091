"""What every fine-tuning task provides: everything that differs between task families lives in a `Task` subclass
(its model class, metric, input schema, defaults, reading and scoring), so the recipes, `predict`, `evaluate`,
`serve` and `export` run any of them without naming one."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertkit.constants import IGNORE_INDEX, INFERENCE_BATCH_SIZE
from bertkit.errors import BertkitError, shown
from bertkit.options import as_whole_number
from bertkit.progress import progress_iter
from bertkit.tasks.settings import TaskSettings
from bertkit.tokenizer import Tokenizer, encoder_inputs, pad_rows

Feature = dict[str, Any]


@dataclass(frozen=True)
class Inference:
    """A task's network ready to answer: the model, its tokenizer, its labels by output row (none for QA) and the
    inputs per forward pass. Fine-tuning runs its model in training this way; `TaskModel` a saved one."""

    model: nn.Module
    tokenizer: Tokenizer
    id2label: dict[int, str]
    batch_size: int = INFERENCE_BATCH_SIZE
    progress: bool = False  # a bar over the batches (the commands; never a server, which answers many requests)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", as_whole_number(self.batch_size, "batch_size"))  # a frozen dataclass

    def logits(self, task: Task, features: list[Feature]) -> list[torch.Tensor]:
        """The model's logits for every feature, in input order (see `run_model`)."""
        return run_model(self.model, task, features, self.tokenizer.pad_id, self.batch_size, self.progress)


class Task:
    """A task family: its model, reading, encoding to features, batching, scoring and prediction output."""

    name: str = ""  # the CLI's --task value and bertkit_task.json's "task"
    main_metric: str = ""  # the dev metric that picks the best model (higher is better)
    curve_scores: tuple[str, ...] = ()  # the dev metrics curves.png draws (main_metric first), each from -1 to 1
    model_class: type[torch.nn.Module]  # the bertkit.model class with this task's head (and its HF architecture)
    # What the head's outputs mean ("classes", "value", "tags", "span"): a model fine-tuned for one task serves
    # another task only with the same head (a pair classifier evaluates single sentences, never a tagger's data).
    head: str = ""
    # config.json's problem_type for a model of this task (transformers reads it to choose the loss); None: none.
    problem_type: str | None = None
    example_class: type = object  # what `read` and `from_json` make, and `TaskModel` takes
    input_schema: str = ""  # one input as a JSON object: what `predict` (JSON lines) and the HTTP API take
    json_fields: tuple[str, ...] = ("text",)  # every field `from_json` reads (the HTTP API refuses others)
    default_max_seq_length: int = TaskSettings.max_seq_length
    export_kind: str = "classifier"  # what `bertkit export` calls the graph of such a model
    onnx_outputs: tuple[str, ...] = ("logits",)  # the exported graph's outputs, named as transformers names them
    per_token: bool = False  # whether those outputs have a sequence dimension: (B, T, ...)
    long_field: str = "text"  # the input's field that may be long (read in windows by a per-token task)
    stdin_suffix: str = ".txt"  # how `predict --input -` reads standard input: as a file of this kind
    truncated: str = "truncated (--long-inputs window reads all of each)"  # what becomes of a long input by default

    def __init__(self, settings: TaskSettings | None = None):
        self.settings = settings or self.default_settings()
        self.cut_inputs = 0  # how many inputs the last `features` call found longer than max_seq_length

    @classmethod
    def default_settings(cls) -> TaskSettings:
        """The settings a run starts from when it is given none."""
        return TaskSettings(max_seq_length=cls.default_max_seq_length)

    def long_inputs_note(self, total: int, source: str | Path | None) -> str | None:
        """A note on the inputs the last `features` call found longer than max_seq_length (None when there were
        none): how many of `total` in `source`, and what became of them."""
        if not self.cut_inputs:
            return None
        return (f"note: {self.cut_inputs:,} of {total:,} inputs in {source} are longer than max_seq_length "
                f"{self.settings.max_seq_length} tokens: {self.long_inputs_fate()}")  # fmt: skip

    def long_inputs_fate(self) -> str:
        """What `features` does with an input longer than max_seq_length, in a few words for a note."""
        return "read in overlapping windows" if self.settings.long_inputs == "window" else self.truncated

    def window_stride(self, size: int) -> int:
        """Tokens between the starts of windows of `size` tokens: `window_stride` (at most a window, so that no
        token is skipped), by default half a window."""
        return min(self.settings.window_stride or max(1, size // 2), size)

    def model_config(self) -> dict[str, Any]:
        """What config.json says about this task's model beyond its labels (a model reads it when it is built):
        transformers' problem_type, and a NER model's CRF."""
        if self.settings.crf:
            raise BertkitError(f"--crf is for --task ner (a CRF reads a sequence of tags), not {self.name}")
        return {"problem_type": self.problem_type} if self.problem_type else {}

    def read(self, path: str | Path, labelled: bool = True) -> list:
        """Read a data file into examples; `labelled=False` accepts input without labels (for prediction)."""
        raise NotImplementedError

    def check_trainable(self, examples: Sequence) -> None:
        """Refuse training examples that `read` accepted for evaluation but that cannot be trained on as they are
        (a QA answer not at its answer_start); the error names the file and the entry."""

    def from_json(self, row: dict, n: int = 0) -> Any:
        """One unlabelled example from a JSON object (an HTTP request's input); `n` is kept as its line number."""
        raise NotImplementedError

    def is_labelled(self, example: Any) -> bool:
        """Whether `example` holds what `evaluate` scores against (its label, tags or answers)."""
        raise NotImplementedError

    def labels(self, examples: Sequence) -> list[str] | None:
        """The label set collected from training examples (None for span QA)."""
        return None

    def check_labels(self, examples: Sequence, label2id: dict[str, int], path: str | Path) -> None:
        """Raise on a label the model does not know (dev/test data)."""

    def features(
        self, examples: Sequence, tok: Tokenizer, label2id: dict[str, int] | None, train: bool
    ) -> list[Feature]:
        """Encode examples into features: `input_ids`, `token_type_ids`, `example` (the index of the example it
        reads: one example may give several features, e.g. windows), labels, and what decoding needs.

        `train` is True for the training set; without `label2id` (None) class and tag labels are left out."""
        raise NotImplementedError

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The subset of a batch that the model's forward takes (labels included when present)."""
        raise NotImplementedError

    def calibrate(self, run: Inference, examples: Sequence, features: list[Feature]) -> None:
        """Choose, on labelled dev `examples`, the settings that decoding reads (a multi-label model's thresholds);
        fine-tuning calls it before each dev evaluation. Most tasks have nothing to choose."""

    def evaluate(self, run: Inference, examples: Sequence, features: list[Feature]) -> dict:
        """Metrics of the model on labelled `examples`, from their `features` (built with train=False)."""
        raise NotImplementedError

    def predict(self, run: Inference, examples: Sequence, features: list[Feature]) -> list[dict]:
        """One JSON-serialisable prediction per example (the lines `bertkit predict` writes)."""
        raise NotImplementedError

    def read_for_prediction(self, path: str | Path) -> list:
        """Inputs to predict from a file: the task's data format without labels (a task may accept more)."""
        return self.read(path, labelled=False)

    def echo(self, example: Any) -> dict:
        """The input of one prediction, so that each output line of `bertkit predict` can be read on its own."""
        raise NotImplementedError

    def where(self, example: Any, path: str | Path) -> str:
        """Where an input came from, for an error message."""
        line = getattr(example, "line", None)
        return f"line {line} of {path}" if line else f"an input of {path}"


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Where windows of `size` positions start over `n` positions, `stride` apart, the last one ending at `n`: one
    window (at 0) when everything fits."""
    if n <= size:
        return [0]
    return [*range(0, n - size, stride), n - size]


def with_marks(text: str, end: int) -> int:
    """`end` moved past the combining marks that follow it in `text`: the tokenizer drops a decomposed accent
    (strip_accents), so a span ending at its letter would cut "e" + U+0301 in two."""
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    return end


def unseen_label(where: str, label: str, known: Sequence[str] | None = None) -> BertkitError:
    """The error for a label of evaluation data that the training data never had (`known`: its labels, listed when
    few enough to read)."""
    listed = f" {list(known)}" if known is not None and len(known) <= 20 else ""
    return BertkitError(
        f"{where}: label {label!r} was not in the training data{listed}: a model predicts only the labels it was "
        "trained on; add examples of it to the training file, or leave it out of this one"
    )


def text_field(row: dict, key: str, alternative: str | None = None) -> str:
    """`row[key]` (or `row[alternative]`) as a non-empty string; else a BertkitError saying which field is wrong."""
    if alternative and key in row and alternative in row:  # one would be read and the other silently not
        raise BertkitError(f"{key!r} and {alternative!r} are two names for one field: give one of them")
    value = row.get(key, row.get(alternative)) if alternative else row.get(key)
    wanted = f"{key!r}" + (f" (or {alternative!r})" if alternative else "")
    if not isinstance(value, str) or not value.strip():
        raise BertkitError(f"{wanted} must be a non-empty string, got {shown(value)}")
    check_encodable(value, wanted)
    return value


def check_fields(row: dict, known: Sequence[str], where: str, takes: str) -> None:
    """A BertkitError naming the fields of `row` outside `known` (a misspelt "topk" would otherwise be ignored
    without a word); `takes` says what to send instead."""
    unknown = [key for key in row if key not in known]
    if unknown:
        names = ", ".join(shown(key) for key in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        fields = f"field {names} is" if len(unknown) == 1 else f"fields {names} are"
        raise BertkitError(f"{where}: {fields} not read here; {takes}")


def check_encodable(text: str, where: str) -> None:
    """A BertkitError for text that cannot be UTF-8 (a lone surrogate, e.g. from JSON's \\ud800), or that holds
    nothing BERT's tokenizer keeps (white space, control and zero-width characters alone: the model would answer
    from [CLS] [SEP], confidently and about nothing)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BertkitError(f"{where} holds a character that is not valid Unicode text ({e.reason})") from None
    if all(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in text):
        raise BertkitError(f"{where} holds no text the model reads (only white space, control or zero-width "
                           "characters)")  # fmt: skip


def pad_batch(features: Sequence[Feature], pad_id: int, keys: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Pad input_ids/token_type_ids (and per-token `labels` when present) to the longest; stack scalar `keys`."""
    out = encoder_inputs([f["input_ids"] for f in features], [f["token_type_ids"] for f in features], pad_id)
    if "token_labels" in features[0]:
        out["labels"] = pad_rows([f["token_labels"] for f in features], IGNORE_INDEX, out["input_ids"].shape[1])
    for k in keys:
        if k in features[0]:
            first = features[0][k]  # a class id, a number (regression) or a 0/1 vector (multi-label)
            dtype = torch.float if isinstance(first[0] if isinstance(first, list) else first, float) else torch.long
            out[k] = torch.tensor([f[k] for f in features], dtype=dtype)
    return out


def _is_sharded(model) -> bool:
    """Whether FSDP shards the model's parameters (they are DTensors)."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def run_model(
    model: nn.Module,
    task: Task,
    features: list[Feature],
    pad_id: int,
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Logits for every feature (batched by length, returned in input order, each unpadded to its length)."""
    # inference_mode skips autograd's bookkeeping on every operator (much of a small batch's dispatch
    # time); FSDP gathers sharded parameters into buffers that training reuses, which must not become inference
    # tensors, so a sharded model (evaluated during training) runs under no_grad.
    with torch.no_grad() if _is_sharded(model) else torch.inference_mode():
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        # Longest first: each batch's tensors then fit in the memory the batch before freed. Shortest first, every
        # batch needed a little more than the last had freed, the heap grew by a batch's activations each time,
        # and predicting a large file kept GBs of freed memory (benchmarks/predict_memory.py).
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        out: list[torch.Tensor | None] = [None] * len(features)
        for s in progress_iter(range(0, len(order), batch_size), progress, desc=task.name, unit="batch"):
            idx = order[s : s + batch_size]
            batch = pad_batch([features[i] for i in idx], pad_id)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits.float().cpu()
            if not bool(torch.isfinite(logits).all()):
                raise BertkitError(
                    "the model's outputs are not a finite number (NaN or infinity) for some inputs: its weights "
                    "overflow or have diverged, e.g. after training with too high a --learning-rate; train it "
                    "again with a lower one. No metric or prediction is given from such outputs"
                )
            for j, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                out[i] = logits[j, :n] if logits.dim() == 3 else logits[j]
        model.train(was_training)
    return out  # type: ignore[return-value]
