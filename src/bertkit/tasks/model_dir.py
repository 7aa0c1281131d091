"""Open a model directory as what it is: a fine-tuned task model, a pre-trained model with its masked-LM head, or a
plain encoder. `predict`, `evaluate`, `fill-mask`, `embed`, `serve` and `export` all open directories here, so each
of them reads bertkit's and Hugging Face's directories alike and refuses an incomplete one with the same words.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertkit.checkpoint import has_mlm_head, tensor_names
from bertkit.config import BertConfig
from bertkit.constants import INFERENCE_BATCH_SIZE, INFERENCE_CHUNK
from bertkit.errors import BertkitError
from bertkit.files import model_directory, read_json_object
from bertkit.machine import release_free_memory
from bertkit.model import BertForPreTraining, BertModel, num_labels_of
from bertkit.progress import progress_bar
from bertkit.tasks.base import Inference, Task
from bertkit.tasks.registry import TASKS, task_class, task_for_architecture
from bertkit.tasks.settings import TaskSettings
from bertkit.tokenizer import Tokenizer

# Written beside a fine-tuned model's weights: {"task": name, "settings": TaskSettings as a dict}. A Hugging Face
# task model has none; its task is read from its architecture (`task_for_architecture`).
TASK_FILE = "bertkit_task.json"
TASK_HEADS = ("classifier.", "qa_outputs.", "crf.")  # parameters a fine-tuned model must hold: trained from scratch


def write_task_record(directory: str | Path, task: Task) -> None:
    """Write `bertkit_task.json` for a model of `task` into `directory`."""
    record = {"task": task.name, "settings": asdict(task.settings)}
    (Path(directory) / TASK_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_task_record(model_dir: str | Path) -> dict:
    """The `bertkit_task.json` of a fine-tuned model directory: {"task", "settings"}, checked."""
    path = Path(model_dir) / TASK_FILE
    record = read_json_object(path, "copy the model directory again")
    if record.get("task") not in TASKS or not isinstance(record.get("settings", {}), dict):
        raise BertkitError(f'{path}: expected {{"task": one of {", ".join(TASKS)}, "settings": {{...}}}}')
    return record


def fine_tuned_task(model_dir: str | Path) -> str | None:
    """The task a model directory was fine-tuned for (bertkit_task.json, else its HF architecture); None for a
    pre-trained or plain encoder directory."""
    path = Path(model_dir)
    if (path / TASK_FILE).is_file():
        return read_task_record(path)["task"]
    extra = BertConfig.load(path).extra
    id2label = extra.get("id2label")
    return task_for_architecture(
        (extra.get("architectures") or [""])[0], len(id2label) if id2label else None, extra.get("problem_type")
    )


def head_labels(config: BertConfig) -> list[str]:
    """A classifier head's labels in row order: config.json's id2label, else the names transformers gives the
    labels it leaves out of config.json where they are its defaults (LABEL_0, LABEL_1, ...)."""
    id2label = config.extra.get("id2label") or {}
    if id2label:
        return [str(id2label.get(str(i), id2label.get(i))) for i in range(len(id2label))]
    return [f"LABEL_{i}" for i in range(num_labels_of(config, None))]


@dataclass
class TaskModel:
    """A fine-tuned model with what answering needs: its task (and settings), tokenizer and labels."""

    task: Task
    model: nn.Module
    tokenizer: Tokenizer
    id2label: dict[int, str]

    def features(self, examples: Sequence) -> list[dict[str, Any]]:
        """The model's inputs for `examples` (labels left out)."""
        self.check_examples(examples)
        return self.task.features(examples, self.tokenizer, None, train=False)

    def check_examples(self, examples: Sequence, labelled: bool = False) -> None:
        """Refuse anything but a list of the task's examples (a dict or a text is made one by `task.from_json`),
        and, when `labelled`, an example without its label: it would be scored as wrong."""
        kind = self.task.example_class.__name__
        make = f"task.from_json({self.task.input_schema.split(', or')[0]}) makes one, task.read(path) a file's"
        if isinstance(examples, str | bytes | dict) or not isinstance(examples, Sequence):
            raise BertkitError(f"examples must be a list of {kind} ({make}), got {type(examples).__name__}")
        for n, example in enumerate(examples):
            if not isinstance(example, self.task.example_class):
                raise BertkitError(f"examples[{n}] is a {type(example).__name__}, not a {kind}: {make}")
            if labelled and not self.task.is_labelled(example):
                raise BertkitError(f"examples[{n}] has no label, and evaluate scores against labels: give labelled "
                                   "examples (task.read(path) reads a labelled file)")  # fmt: skip

    def inference(self, batch_size: int = INFERENCE_BATCH_SIZE, progress: bool = False) -> Inference:
        """The model ready to answer, `batch_size` inputs per forward pass (with a bar over them: `progress`)."""
        return Inference(self.model, self.tokenizer, self.id2label, batch_size, progress)

    def predict(
        self,
        examples: Sequence,
        batch_size: int = INFERENCE_BATCH_SIZE,
        progress: bool = False,
        features: list[dict[str, Any]] | None = None,
    ) -> list[dict]:
        """One JSON-serialisable prediction per example, `batch_size` inputs per forward pass. `features`: what
        `self.features(examples)` returned, when the caller has made them already (the server does, to price a
        request before it queues it), so that nothing is encoded twice."""
        if features is None:
            features = self.features(examples)
        else:
            self.check_examples(examples)
            if {f["example"] for f in features} != set(range(len(examples))):
                raise BertkitError(f"features: expected those of the {len(examples)} examples given, as "
                                   "features(examples) makes them")  # fmt: skip
        return self.task.predict(self.inference(batch_size, progress), examples, features)

    def predict_iter(
        self, examples: Sequence, batch_size: int = INFERENCE_BATCH_SIZE, progress: bool = False
    ) -> Iterator[dict]:
        """`predict`'s answers one by one, in order, computed `INFERENCE_CHUNK` examples at a time: memory stays
        flat however many examples there are (all of their features at once took GBs), and the first answers
        come while the rest are computed. The task's `cut_inputs` counts the long inputs of all of them."""
        cut = 0
        with progress_bar(progress, total=len(examples), desc=self.task.name, unit="input") as bar:
            for start in range(0, len(examples), INFERENCE_CHUNK):
                part = examples[start : start + INFERENCE_CHUNK]
                rows = self.predict(part, batch_size)
                # A chunk's features and tensors, freed, leave holes in the heap that glibc keeps: handed back,
                # the process stays at one chunk's size instead of growing with each.
                release_free_memory()
                cut += self.task.cut_inputs
                yield from rows
                if bar is not None:
                    bar.update(len(part))
        self.task.cut_inputs = cut

    def evaluate(
        self, examples: Sequence, source: str | Path, batch_size: int = INFERENCE_BATCH_SIZE, progress: bool = False
    ) -> dict:
        """The task's metrics on labelled `examples` read from `source`, `batch_size` inputs per forward pass; a
        label the model does not know is an error naming its line in `source`."""
        self.check_examples(examples, labelled=True)
        if self.id2label:
            self.task.check_labels(examples, {v: k for k, v in self.id2label.items()}, source)
        return self.task.evaluate(self.inference(batch_size, progress), examples, self.features(examples))


def as_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device (None stays None); a name that is none is a BertkitError (a task's name, given
    where the openers take the device, says that the task is a keyword)."""
    if device is None or isinstance(device, torch.device):
        return device
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        hint = f"; a task is given by keyword: task={device!r}" if device in TASKS else ""
        raise BertkitError(f"device {device!r} is not a device (cpu, cuda or cuda:N){hint}") from None


def open_task_model(
    model_dir: str | Path, device: str | torch.device | None = None, *, task: str | None = None
) -> TaskModel:
    """The fine-tuned model in `model_dir` (on `device`, default the CPU), as a `task` model when given (which must
    have the same kind of head as the one it was fine-tuned for: a pair classifier evaluates single sentences, never
    a tagger's data)."""
    path, device = Path(model_dir), as_device(device)
    if task is not None:
        task_class(task)  # a name it knows
    name = fine_tuned_task(path)
    if name is None:
        arch = (BertConfig.load(path).extra.get("architectures") or [""])[0]
        raise BertkitError(
            f"{model_dir} is a {arch or 'plain BERT'} model, not a fine-tuned task model: fine-tune it first "
            "(bertkit finetune), or use a model directory written by it"
        )
    if task and TASKS[task].head != TASKS[name].head:
        raise BertkitError(f"{model_dir} was fine-tuned for {name!r}, not {task!r}")
    # Pairs to a model that learnt from single texts: answers, but of nothing. A Hugging Face classifier does not
    # record which it learnt from: the caller's word is taken.
    if task == "pair" and name != "pair" and (path / TASK_FILE).is_file():
        raise BertkitError(f"{model_dir} was fine-tuned on single texts ({name!r}): it cannot judge text pairs")
    record = read_task_record(path) if (path / TASK_FILE).is_file() else {}
    try:
        task_obj = TASKS[task or name](TaskSettings(**record.get("settings", {})))
    except TypeError as e:  # a settings key this bertkit does not know
        raise BertkitError(f"{path / TASK_FILE}: settings do not fit this bertkit ({e})") from None
    except BertkitError as e:  # a value its flag would refuse
        raise BertkitError(f"{path / TASK_FILE}: settings: {e}") from None
    config = BertConfig.load(path)
    id2label = {int(k): v for k, v in (config.extra.get("id2label") or {}).items()}
    model = task_obj.model_class.from_pretrained(path, num_labels=len(id2label) or None)
    heads = [n for n in getattr(model, "fresh_parameters", []) if n.startswith(TASK_HEADS)]
    if heads:  # a task model without its trained head would answer at random, with exit 0
        raise BertkitError(
            f"{path}: the weights hold no trained task head ({heads[0]} is missing or of another shape): it is "
            "not a complete fine-tuned model; copy the whole directory again, or fine-tune again"
        )
    if not id2label and hasattr(model, "num_labels") and task_obj.name != "qa":
        id2label = dict(enumerate(head_labels(config)))
    if device is not None:
        model.to(device)
    return TaskModel(task_obj, model, Tokenizer.from_pretrained(path), id2label)


@dataclass
class ModelDir:
    """An opened model directory. Exactly one of `task_model` (a fine-tuned model) and `mlm` (a pre-trained model
    with its masked-LM head) is set, or neither (a plain encoder); `encoder` is always the BERT encoder inside."""

    path: Path
    config: BertConfig
    tokenizer: Tokenizer
    encoder: BertModel
    task_model: TaskModel | None = None
    mlm: BertForPreTraining | None = None

    @property
    def kind(self) -> str:
        """One of "task", "pretrained" and "encoder"."""
        return "task" if self.task_model else "pretrained" if self.mlm is not None else "encoder"

    @property
    def model(self) -> nn.Module:
        """The whole model: the task model, the pre-training model, or the encoder."""
        if self.task_model is not None:
            return self.task_model.model
        return self.mlm if self.mlm is not None else self.encoder


def open_model_dir(
    model_dir: str | Path, device: str | torch.device | None = None, *, task: str | None = None
) -> ModelDir:
    """Open any model directory (bertkit's or Hugging Face's) as what it is; a fine-tuned one as a `task` model when
    given (see `open_task_model`). Only weights the directory holds are loaded as heads: a directory without the
    masked-LM head opens as an encoder, and an encoder without the pooler's weights gets no pooler (never a freshly
    initialised output)."""
    path, device = model_directory(model_dir), as_device(device)
    if task is not None:
        task_class(task)
    config = BertConfig.load(path)
    fine_tuned = fine_tuned_task(path)
    if task and not fine_tuned:
        raise BertkitError(f"{model_dir} is not a fine-tuned task model: --task {task} is for one")
    if fine_tuned:
        task_model = open_task_model(path, device, task=task)
        encoder: BertModel = task_model.model.bert  # type: ignore[assignment]
        return ModelDir(path, config, task_model.tokenizer, encoder, task_model=task_model)
    tokenizer = Tokenizer.from_pretrained(path)
    names = tensor_names(path)
    if has_mlm_head(names):
        mlm = BertForPreTraining.from_pretrained(path)
        partial = [n for n in mlm.fresh_parameters if n.startswith("mlm.")]  # type: ignore[attr-defined]
        if partial:  # its fill-mask would answer from a randomly initialised transform, with exit 0
            raise BertkitError(
                f"{path}: the weights hold only part of the masked-LM head ({partial[0]} is missing or of another "
                "shape): it is not a complete pre-trained model; copy the whole directory again"
            )
        if device is not None:
            mlm.to(device)
        return ModelDir(path, config, tokenizer, mlm.bert, mlm=mlm)
    pooler = any(n.removeprefix("bert.").startswith("pooler.") for n in names)
    encoder = BertModel.from_pretrained(path, add_pooler=pooler)
    if device is not None:
        encoder.to(device)
    return ModelDir(path, config, tokenizer, encoder)
