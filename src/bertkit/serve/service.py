"""One model directory behind the HTTP API: what the model can do, and the calls that do it.

A fine-tuned task model predicts (labels, entities or answers); a pre-trained model with its masked-LM head fills
[MASK]s; every model embeds sentences. The HTTP layer (`bertkit.serve.server`) only parses requests and calls these.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from bertkit.checkpoint import has_mlm_head
from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.files import no_such_path
from bertkit.infer import embed, embedding_settings, fill_mask
from bertkit.machine import pick_device
from bertkit.model import BertForPreTraining, BertModel
from bertkit.tasks.base import check_encodable
from bertkit.tokenizer import Tokenizer

T = TypeVar("T")
MAX_INPUTS = 256  # per request: larger batches belong to `bertkit predict` / `bertkit embed` on files
TASK_INPUT = {
    "cls": '{"text": "..."}',
    "pair": '{"text_a": "...", "text_b": "..."}',
    "regression": '{"text": "..."}, or {"text_a": "...", "text_b": "..."} for a model trained on pairs',
    "ner": '{"text": "..."}',
    "qa": '{"question": "...", "context": "..."}',
}


class Service:
    """A loaded model directory and its calls; thread-safe (model calls run one at a time on one worker thread)."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        from bertkit.recipes.finetune import fine_tuned_task, load_task_model

        self.path = Path(model_dir)
        if not self.path.is_dir():
            raise BertkitError(no_such_path(self.path))
        self.device = pick_device(device)
        self.config = BertConfig.load(self.path)
        self.task_name = fine_tuned_task(self.path)  # None: a pre-trained or plain encoder (fill-mask, embed)
        self.mlm: BertForPreTraining | None = None
        self.task_model: torch.nn.Module | None = None
        if self.task_name:
            self.task, self.task_model, self.tokenizer, self.id2label = load_task_model(self.path, None, self.device)
            self.encoder: BertModel = self.task_model.bert  # type: ignore[assignment]
        else:
            self.tokenizer = Tokenizer.from_pretrained(self.path)
            if has_mlm_head(self.path):
                self.mlm = BertForPreTraining.from_pretrained(self.path).to(self.device)
                self.encoder = self.mlm.bert
            else:
                self.encoder = BertModel.from_pretrained(self.path).to(self.device)
        self.embedding = embedding_settings(self.path)
        # Every model call runs on this one thread, in arrival order: torch already spreads a call over every core,
        # and a fresh thread per request would pay for a fresh OpenMP thread team each time (measured: ~5 ms).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertkit-model")

    def _run(self, fn: Callable[[], T]) -> T:
        return self._worker.submit(fn).result()

    def info(self) -> dict[str, Any]:
        """What the model is and which endpoints it answers."""
        endpoints = ["/api/embed"]
        if self.task_name:
            endpoints.insert(0, "/api/predict")
        if self.mlm is not None:
            endpoints.insert(0, "/api/fill-mask")
        c = self.config
        return {
            "model": str(self.path),
            "task": self.task_name,
            "input": TASK_INPUT.get(self.task_name or ""),
            "labels": [self.id2label[i] for i in sorted(self.id2label)] if self.task_name else None,
            "endpoints": endpoints,
            "config": {
                "layers": c.num_hidden_layers,
                "hidden_size": c.hidden_size,
                "heads": c.num_attention_heads,
                "vocab_size": c.vocab_size,
                "max_position_embeddings": c.max_position_embeddings,
            },
            "embedding": {"pooling": self.embedding["pooling"], "normalize": self.embedding["normalize"]},
            "device": str(self.device),
        }

    def predict(self, inputs: list[dict]) -> list[dict]:
        """The task model's predictions, one per input object (the fields `info()["input"]` names)."""
        if not self.task_name:
            raise BertkitError(
                f"{self.path} is not a fine-tuned task model, so it has no predictions; "
                f"it answers {', '.join(self.info()['endpoints'])}"
            )
        _check_count(inputs, "inputs")
        examples = []
        for n, row in enumerate(inputs):
            if not isinstance(row, dict):
                raise BertkitError(f"inputs[{n}]: expected an object like {TASK_INPUT[self.task_name]}, got {row!r}")
            try:
                examples.append(self.task.from_json(row, n))
            except BertkitError as e:
                wanted = TASK_INPUT[self.task_name]
                raise BertkitError(f"inputs[{n}]: {e}; a {self.task_name} model takes {wanted}") from None

        def run() -> list[dict]:
            features = self.task.features(examples, self.tokenizer, None, train=False)
            return self.task.predict(self.task_model, self.tokenizer, examples, features, self.id2label)

        return self._run(run)

    def fill_mask(self, texts: list[str], top_k: int = 5) -> list[dict]:
        """Top-k tokens for every [MASK] of each text."""
        if self.mlm is None:
            raise BertkitError(f"{self.path} has no masked-LM head (cls.predictions.*), so it cannot fill [MASK]")
        _check_texts(texts)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100:
            raise BertkitError(f"top_k must be an integer from 1 to 100, got {top_k!r}")
        mlm = self.mlm

        def run() -> list[dict]:
            out = []
            for n, text in enumerate(texts):
                try:
                    masks = fill_mask(mlm, self.tokenizer, text, top_k=top_k)
                except BertkitError as e:  # the same kind of error (bad input, or a model that overflows)
                    raise type(e)(f"texts[{n}]: {e}") from None
                out.append({"text": text, "masks": [[{"token": t, "score": p} for t, p in m] for m in masks]})
            return out

        return self._run(run)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Sentence embeddings with the directory's pooling (mean, L2-normalised, unless it says otherwise)."""
        _check_texts(texts)
        settings = self.embedding
        max_length = settings["max_length"] or self.config.max_position_embeddings

        def run() -> np.ndarray:
            return embed(self.encoder, self.tokenizer, texts, max_length=max_length, pooling=settings["pooling"],
                         normalize=settings["normalize"], device=self.device)  # fmt: skip

        return self._run(run).tolist()


def _check_count(items: Any, name: str) -> None:
    if not isinstance(items, list) or not items:
        raise BertkitError(f"{name} must be a non-empty list, got {type(items).__name__}")
    if len(items) > MAX_INPUTS:
        raise BertkitError(f"{len(items)} {name} in one request; send at most {MAX_INPUTS} (or use the CLI on a file)")


def _check_texts(texts: Any) -> None:
    _check_count(texts, "texts")
    for n, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise BertkitError(f"texts[{n}] must be a non-empty string, got {t!r}")
        check_encodable(t, f"texts[{n}]")
