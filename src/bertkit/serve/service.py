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

from bertkit.constants import TOP_K
from bertkit.errors import BertkitError
from bertkit.infer import embed, embedding_settings, fill_mask
from bertkit.machine import pick_device
from bertkit.tasks.base import check_encodable
from bertkit.tasks.model_dir import open_model_dir

T = TypeVar("T")
MAX_INPUTS = 256  # per request: larger batches belong to `bertkit predict` / `bertkit embed` on files


class Service:
    """A loaded model directory and its calls; thread-safe (model calls run one at a time on one worker thread)."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        self.path = Path(model_dir)
        self.device = pick_device(device)
        opened = open_model_dir(self.path, self.device)
        self.config, self.tokenizer, self.encoder = opened.config, opened.tokenizer, opened.encoder
        self.mlm = opened.mlm
        self.task_model = opened.task_model  # None: a pre-trained or plain encoder (fill-mask, embed)
        self.task_name = self.task_model.task.name if self.task_model else None
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
            "input": self.task_model.task.input_schema if self.task_model else None,
            "labels": [tm.id2label[i] for i in sorted(tm.id2label)] if (tm := self.task_model) else None,
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
        task_model = self.task_model
        if task_model is None:
            raise BertkitError(
                f"{self.path} is not a fine-tuned task model, so it has no predictions; "
                f"it answers {', '.join(self.info()['endpoints'])}"
            )
        _check_count(inputs, "inputs")
        task, examples = task_model.task, []
        for n, row in enumerate(inputs):
            if not isinstance(row, dict):
                raise BertkitError(f"inputs[{n}]: expected an object like {task.input_schema}, got {row!r}")
            try:
                examples.append(task.from_json(row, n))
            except BertkitError as e:
                raise BertkitError(f"inputs[{n}]: {e}; a {task.name} model takes {task.input_schema}") from None
        return self._run(lambda: task_model.predict(examples))

    def fill_mask(self, texts: list[str], top_k: int = TOP_K) -> list[dict]:
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
