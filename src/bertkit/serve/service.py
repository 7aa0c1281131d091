"""One model directory behind the HTTP API: what the model can do, and the calls that do it.

A fine-tuned task model predicts (labels, entities or answers); a pre-trained model with its masked-LM head fills
[MASK]s; every model embeds sentences. The HTTP layer (`bertkit.serve.app`) only parses requests and calls these.

Every call is checked and priced here, in the caller's thread (`prepare_*`: bad input is a BertkitError, too much
work a `WorkTooLarge`), then queued on the `Batcher`, whose one worker thread runs the model over batches of many
clients' inputs (`_run_batch`). The model is whatever `open_model_dir` opened: another backend plugs in by opening
a `ModelDir`-like object with the same calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bertkit.constants import TOP_K
from bertkit.errors import BertkitError, shown
from bertkit.infer import (
    MaskPastTheCutError,
    embed,
    embedding_length,
    embedding_settings,
    fill_mask_answers,
    masked_encoding,
)
from bertkit.machine import (
    CpuElsewhere,
    cpu_has_native_bf16,
    limit_kernel_cache,
    pick_device,
    release_free_memory,
    threads_beside,
)
from bertkit.model import BF16_FROM_TOKENS, set_bf16_from_tokens
from bertkit.serve.batching import PADDED_SLACK, UNPADDED_SLACK, Batcher, Job, run_bucketed
from bertkit.serve.limits import (
    MAX_BATCH_TOKENS,
    MAX_INPUTS,
    MAX_TOP_K,
    MAX_WAIT_MS,
    MAX_WINDOWS,
    PRECISIONS,
    ServeConfig,
)
from bertkit.serve.metrics import Metrics
from bertkit.tasks.base import check_encodable, check_fields
from bertkit.tasks.model_dir import ModelDir, open_model_dir
from bertkit.tokenizer import Encoding, is_cjk


class WorkTooLarge(BertkitError):
    """A request within the body limit that asks for more model work than one request may (HTTP 413)."""


class Service:
    """A loaded model directory and its calls; thread-safe (model calls run one batch at a time on one thread)."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        *,
        batching: bool = ServeConfig.batching == "on",
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        max_wait_ms: float = MAX_WAIT_MS,
        max_windows: int = MAX_WINDOWS,
        precision: str = ServeConfig.precision,
        metrics: Metrics | None = None,
        opened: ModelDir | None = None,
        task: str | None = None,
    ):
        self.path = Path(model_dir)
        self.device = pick_device(device)
        check_precision(precision, self.device)
        self.precision = precision
        self.metrics = metrics or Metrics()
        m = self.metrics
        self.batcher = Batcher(self._run_batch, max_batch_tokens, max_wait_ms, enabled=batching,
                               on_batch=m.observe_batch, on_queue=m.queue_depth.set, on_drop=m.dropped.inc,
                               tidy=release_free_memory)  # fmt: skip
        started = time.perf_counter()
        try:
            # Loaded on the worker thread, which runs every model call: no other thread of the process ever runs a
            # parallel PyTorch operator. Once two threads have, OpenMP (libgomp) has more threads than cores and
            # stops spin-waiting between parallel regions, and every operator waits for a sleeping thread to wake.
            opened = opened or self.batcher.call(lambda: open_model_dir(self.path, self.device, task=task))
        except BaseException:
            self.batcher.close()
            raise
        self.metrics.load_seconds.set(time.perf_counter() - started)
        self.config, self.tokenizer, self.encoder = opened.config, opened.tokenizer, opened.encoder
        self.mlm = opened.mlm
        self.task_model = opened.task_model  # None: a pre-trained or plain encoder (fill-mask, embed)
        predictor = self.task_model.model if self.task_model else None
        self._slack = {"predict": _bucket_slack(predictor), "embed": _bucket_slack(self.encoder),
                       "fill-mask": _bucket_slack(self.mlm)}  # fmt: skip
        # PyTorch on the CPU: the model runs on the cores other work leaves it (see `threads_beside`), at most on
        # the intra-op threads it had when opened. onnxruntime's thread pool is fixed when its session is made.
        self._elsewhere: CpuElsewhere | None = None
        models = [m for m in (self.encoder, self.mlm, predictor) if m is not None]
        self._onnx = next((m for m in models if not isinstance(m, torch.nn.Module)), None)  # --backend onnx
        if all(isinstance(m, torch.nn.Module) for m in models) and self.device.type == "cpu":
            self._elsewhere = CpuElsewhere()
            self._most_threads = self.batcher.call(torch.get_num_threads)
            self.metrics.model_threads.set(self._most_threads)
        if precision == "bf16":
            self._run_large_batches_in_bf16(models)
        self.task_name = self.task_model.task.name if self.task_model else None
        self.embedding = embedding_settings(self.path)
        self.max_windows = max_windows
        self.ready_error: str | None = None
        self.ready_error = self._canary()

    def _run_large_batches_in_bf16(self, models: list[Any]) -> None:
        if not all(isinstance(m, torch.nn.Module) for m in models):
            self.batcher.close()
            raise BertkitError("--precision bf16 is for the torch backend; an ONNX model runs as it was exported")
        limit_kernel_cache()  # batches of many shapes: an unbounded kernel cache would hold ever more memory
        for model in models:
            set_bf16_from_tokens(model)

    def close(self) -> None:
        """Stop the model's worker thread."""
        self.batcher.close()

    def _canary(self) -> str | None:
        """One short forward pass: None when its output is finite, else why not (for /readyz)."""
        try:
            self.batcher.call(lambda: self._embed_batch([(["ok"], [3], [])]))
        except Exception as e:
            return f"the model's test forward pass failed: {e}"
        return None

    def info(self) -> dict[str, Any]:
        """What the model is and which endpoints it answers."""
        endpoints = ["/api/embed"]
        if self.task_name:
            endpoints.insert(0, "/api/predict")
        if self.mlm is not None:
            endpoints.insert(0, "/api/fill-mask")
        c, onnx = self.config, self._onnx
        if onnx is not None:
            precision = onnx.precision
        else:
            precision = "fp32" if self.precision == "fp32" else f"bf16 for batches of {BF16_FROM_TOKENS}+ tokens"
        embedding = {**{k: self.embedding[k] for k in ("pooling", "normalize")}, "max_length": self._embed_max_length()}
        return {
            "model": str(self.path),
            "task": self.task_name,
            "input": self.task_model.task.input_schema if self.task_model else None,
            "pairs": bool(getattr(self.task_model.task, "pair", False)) if self.task_model else None,
            "labels": [tm.id2label[i] for i in sorted(tm.id2label)] if (tm := self.task_model) else None,
            "endpoints": endpoints,
            "config": {
                "layers": c.num_hidden_layers,
                "hidden_size": c.hidden_size,
                "heads": c.num_attention_heads,
                "vocab_size": c.vocab_size,
                "max_position_embeddings": c.max_position_embeddings,
            },
            # Longer inputs are cut there (a task model's NER and QA read them in windows instead).
            "max_seq_length": self.task_model.task.settings.max_seq_length if self.task_model else None,
            "embedding": embedding,
            "device": str(self.device),
            "backend": "onnx" if onnx is not None else "torch",
            "onnx": str(onnx.path) if onnx is not None else None,
            "precision": precision,
        }

    # Checking and pricing a request (the caller's thread), then queueing it.

    def prepare_predict(self, inputs: Any) -> tuple[str, Any, int, int]:
        """(kind, payload, tokens, rows) of a predict request; a BertkitError for bad input, `WorkTooLarge` for an
        input needing more than `max_windows` windows."""
        task_model = self.task_model
        if task_model is None:
            raise BertkitError(
                f"{self.path} is not a fine-tuned task model, so it has no predictions; "
                f"it answers {', '.join(self.info()['endpoints'])}"
            )
        _check_count(inputs, "inputs")
        task, examples = task_model.task, []
        if task.per_token:  # before anything reads a long text word by word (slow for a megabyte)
            texts = [row.get(task.long_field) if isinstance(row, dict) else None for row in inputs]
            self._check_windows(texts, task.settings.max_seq_length)
        for n, row in enumerate(inputs):
            if not isinstance(row, dict):
                raise BertkitError(f"inputs[{n}]: expected an object like {task.input_schema}, got {shown(row)}")
            check_fields(row, task.json_fields, f"inputs[{n}]", f"a {task.name} model takes {task.input_schema}")
            try:
                examples.append(task.from_json(row, n))
            except BertkitError as e:
                raise BertkitError(f"inputs[{n}]: {e}; a {task.name} model takes {task.input_schema}") from None
        # Features cut every text at the model's max_seq_length; NER and QA cover a long one in windows.
        features = task_model.features(examples)
        windows, tokens = [0] * len(examples), [0] * len(examples)
        for f in features:
            windows[f["example"]] += 1
            tokens[f["example"]] += len(f["input_ids"])
        worst = max(range(len(examples)), key=windows.__getitem__)
        if windows[worst] > self.max_windows:
            length = task.settings.max_seq_length
            raise WorkTooLarge(
                f"inputs[{worst}] needs {windows[worst]} windows of {length} tokens; this server reads at most "
                f"{self.max_windows} per input (--max-windows): send a shorter text, or split it"
            )
        per_example: list[list[dict]] = [[] for _ in examples]  # kept for the worker: it encodes nothing again
        for f in features:
            per_example[f["example"]].append(f)
        return "predict", (examples, tokens, per_example), sum(tokens), len(examples)

    def _check_windows(self, texts: list[Any], length: int) -> None:
        """Refuse a text too long for `max_windows` from its token count alone (at least tokens / length windows),
        before the task reads it word by word. The count stops once it passes the limit, so refusing a megabyte
        costs what reading `max_windows` windows does, not what reading all of it would. Texts that are not
        strings are left to the task's own checks."""
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                continue
            check_encodable(text, f"inputs[{n}]")
            least = -(-self._tokens_at_least(text, self.max_windows * length) // length)
            if least > self.max_windows:
                raise WorkTooLarge(
                    f"inputs[{n}] needs at least {least} windows of {length} tokens; this server reads at most "
                    f"{self.max_windows} per input (--max-windows): send a shorter text, or split it"
                )

    def _tokens_at_least(self, text: str, limit: int, piece: int = 4096) -> int:
        """The number of tokens of `text` (no [CLS]/[SEP]), counted piece by piece until it passes `limit`: then a
        lower bound. Each piece ends before white space or a CJK character, where BERT's tokenizer splits anyway,
        so it is tokenized as within the whole text (a word is never cut: one longer than 100 characters is one
        [UNK], a part of it could be many pieces)."""
        count, start = 0, 0
        while start < len(text) and count <= limit:
            end = min(start + piece, len(text))
            while end < len(text) and not (text[end].isspace() or is_cjk(text[end])):
                end += 1
            count += len(self.tokenizer.encode(text[start:end], truncation=False).input_ids) - 2
            start = end
        return count

    def prepare_fill_mask(self, texts: Any, top_k: Any = TOP_K) -> tuple[str, Any, int, int]:
        """(kind, payload, tokens, rows) of a fill-mask request."""
        if self.mlm is None:
            raise BertkitError(f"{self.path} has no masked-LM head (cls.predictions.*), so it cannot fill [MASK]")
        _check_texts(texts)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
            raise BertkitError(f"top_k must be an integer from 1 to {MAX_TOP_K}, got {shown(top_k)}")
        encodings = []  # as fill-mask reads the texts (cut to fit), kept for the worker: it tokenizes nothing again
        for n, text in enumerate(texts):
            try:
                encodings.append(masked_encoding(self.tokenizer, text))
            except MaskPastTheCutError as e:
                raise WorkTooLarge(f"texts[{n}]: {e}") from None
            except BertkitError as e:
                raise BertkitError(f"texts[{n}]: {e}") from None
        return "fill-mask", (texts, top_k, encodings), sum(len(e) for e in encodings), len(texts)

    def prepare_embed(self, texts: Any) -> tuple[str, Any, int, int]:
        """(kind, payload, tokens, rows) of an embed request (texts cut at the model's maximum length, and the
        answer says which were)."""
        _check_texts(texts)
        limit = self._embed_max_length()
        whole = [len(ids) + 2 for ids in self.tokenizer.ids_batch(texts)]  # + [CLS] and [SEP]
        lengths = [min(n, limit) for n in whole]
        cut = [i for i, n in enumerate(whole) if n > limit]
        return "embed", (texts, lengths, cut), sum(lengths), len(texts)

    def submit(self, prepared: tuple[str, Any, int, int]) -> Job:
        """Queue a prepared request; `job.future` holds its answer, `job.cancel()` drops it if not yet run."""
        kind, payload, tokens, rows = prepared
        return self.batcher.submit(kind, payload, tokens, rows)

    # The blocking calls (library use): check, queue, wait.

    def predict(self, inputs: list[dict]) -> list[dict]:
        """The task model's predictions, one per input object (the fields `info()["input"]` names)."""
        return self.submit(self.prepare_predict(inputs)).future.result()

    def fill_mask(self, texts: list[str], top_k: int = TOP_K) -> list[dict]:
        """Top-k tokens for every [MASK] of each text."""
        return self.submit(self.prepare_fill_mask(texts, top_k)).future.result()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Sentence embeddings with the directory's pooling (mean, L2-normalised, unless it says otherwise)."""
        return self.submit(self.prepare_embed(texts)).future.result()["embeddings"]

    # The model calls (the batcher's worker thread): one call over many requests' payloads.

    def _run_batch(self, kind: str, payloads: Sequence[Any]) -> list[Any]:
        if self._elsewhere is not None:
            self._fit_threads(self._elsewhere)
        if kind == "predict":
            return self._predict_batch(payloads)
        if kind == "embed":
            return self._embed_batch(payloads)
        if kind == "fill-mask":
            return self._fill_mask_batch(payloads)
        raise ValueError(f"unknown kind of work {kind!r}")

    def _predict_batch(self, payloads: Sequence[tuple[list[Any], list[int], list[list[dict]]]]) -> list[Any]:
        """The predictions of each predict request, from forward passes over all their examples (length buckets),
        each example with the features `prepare_predict` made of it."""
        items = [(ex, fs) for examples, _, features in payloads for ex, fs in zip(examples, features, strict=True)]

        def run(part: list[tuple[Any, list[dict]]]) -> list[dict]:
            features = [{**f, "example": i} for i, (_, fs) in enumerate(part) for f in fs]  # numbered in `part`
            return self.task_model.predict([ex for ex, _ in part], features=features)  # type: ignore[union-attr]

        rows = run_bucketed(items, [n for _, tokens, _ in payloads for n in tokens], run, self._slack["predict"])
        return _split(rows, [len(examples) for examples, _, _ in payloads])

    def _fit_threads(self, elsewhere: CpuElsewhere) -> None:
        """Set the worker's intra-op threads for the next batch from the CPU other work used lately."""
        cores = elsewhere.cores()
        if cores is None:
            return
        self.metrics.cpu_elsewhere.set(cores)
        current = torch.get_num_threads()
        threads = threads_beside(self._most_threads, cores, current)
        if threads != current:
            torch.set_num_threads(threads)
            self.metrics.model_threads.set(threads)

    def _embed_max_length(self) -> int:
        return embedding_length(self.tokenizer, self.config, self.embedding["max_length"])  # as `bertkit embed` cuts

    def _embed_batch(self, payloads: Sequence[tuple[list[str], list[int], list[int]]]) -> list[dict]:
        """The answer of each embed request: its `embeddings`, their `dim`, and `truncated`, the positions of the
        texts cut at the model's maximum length, where there are any."""
        settings, max_length = self.embedding, self._embed_max_length()

        def run(texts: list[str]) -> list[list[float]]:
            vectors = embed(self.encoder, self.tokenizer, texts, batch_size=len(texts), max_length=max_length,
                            pooling=settings["pooling"], normalize=settings["normalize"],
                            device=self.device)  # fmt: skip
            return vectors.tolist()

        texts, lengths = [t for p in payloads for t in p[0]], [n for p in payloads for n in p[1]]
        rows = run_bucketed(texts, lengths, run, self._slack["embed"])
        answers = []
        for vectors, (_, _, cut) in zip(_split(rows, [len(p[0]) for p in payloads]), payloads, strict=True):
            answers.append({"embeddings": vectors, "dim": len(vectors[0]), **({"truncated": cut} if cut else {})})
        return answers

    def _fill_mask_batch(self, payloads: Sequence[tuple[list[str], int, list[Encoding]]]) -> list[Any]:
        """The answer of each fill-mask request, from forward passes over all their texts (length buckets, each
        text with its request's top_k and its encoding from `prepare_fill_mask`). Should the model overflow on a
        text, each request runs alone, so that only its own answer is the error."""
        items = [(t, k, e) for texts, k, encodings in payloads for t, e in zip(texts, encodings, strict=True)]

        def run(part: list[tuple[str, int, Encoding]]) -> list[dict]:
            texts, ks, encodings = (list(column) for column in zip(*part, strict=True))
            return fill_mask_answers(self.mlm, self.tokenizer, texts, ks, batch_size=len(part),  # type: ignore[arg-type]
                                     encodings=encodings)  # fmt: skip

        try:
            rows = run_bucketed(items, [len(e) for _, _, e in items], run, self._slack["fill-mask"])
        except BertkitError:
            return [self._fill_mask_alone(*payload) for payload in payloads]
        return _split(rows, [len(texts) for texts, _, _ in payloads])

    def _fill_mask_alone(self, texts: list[str], top_k: int, encodings: list[Encoding]) -> list[dict] | BertkitError:
        try:
            return fill_mask_answers(self.mlm, self.tokenizer, texts, top_k, encodings=encodings)  # type: ignore[arg-type]
        except BertkitError as e:  # the same kind of error (bad input, or a model that overflows)
            return e


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a `--precision` that is unknown, or bf16 where the device would only emulate it (slower than fp32)."""
    if precision not in PRECISIONS:
        raise BertkitError(f"--precision {precision!r} is not available; choose one of {', '.join(PRECISIONS)}")
    if precision != "bf16":
        return
    if device.type == "cpu" and not cpu_has_native_bf16():
        raise BertkitError(
            "--precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one would emulate it, "
            "slower than fp32: leave --precision at fp32"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BertkitError("--precision bf16: this GPU has no bf16; leave --precision at fp32")


def _bucket_slack(model: Any) -> tuple[float, int]:
    """How widely a batch's lengths may range in one forward of `model` (see `bertkit.serve.batching`): widely for a
    PyTorch model that removes padding inside, narrowly for any other (an ONNX graph pads every input)."""
    unpads = isinstance(model, torch.nn.Module) and any(getattr(m, "unpad", False) for m in model.modules())
    return UNPADDED_SLACK if unpads else PADDED_SLACK


def _split(rows: list, counts: list[int]) -> list[list]:
    """`rows` cut into consecutive pieces of `counts` rows."""
    out, start = [], 0
    for n in counts:
        out.append(rows[start : start + n])
        start += n
    return out


def _check_count(items: Any, name: str) -> None:
    if not isinstance(items, list) or not items:
        raise BertkitError(f"{name} must be a non-empty list, got {type(items).__name__}")
    if len(items) > MAX_INPUTS:
        raise BertkitError(f"{len(items)} {name} in one request; send at most {MAX_INPUTS} (or use the CLI on a file)")


def _check_texts(texts: Any) -> None:
    _check_count(texts, "texts")
    for n, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise BertkitError(f"texts[{n}] must be a non-empty string, got {shown(t)}")
        check_encodable(t, f"texts[{n}]")
