"""`bertkit prepare`: corpus files -> tokenized NSP instances in compact binary shards, streaming.

Layout of a data directory:
  manifest.json                      settings, counts, shard list (written last: its presence means complete)
  tokenizer/                         the tokenizer the ids belong to
  {split}-{k:05d}.tokens.bin         token ids of A then B for every instance (uint16 or uint32)
  {split}-{k:05d}.index.bin          int64 rows (offset, len_a, len_b, nsp_label)
  {split}-{k:05d}.starts.bin         uint8 word-start flags per token (whole-word masking only)

Memory stays flat in corpus size: documents are grouped into blocks of about `block_chars` characters, each block
is turned into instances on its own (random NotNext segments come from the same block), and at most two blocks
per worker are in flight. Blocks and their random generators depend only on the corpus and the seed, so the
output is the same for any number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bertkit.data.instances import instances_from_document
from bertkit.data.sentences import iter_documents
from bertkit.errors import BertkitError
from bertkit.tokenizer import Tokenizer

FORMAT = "bertkit-pretraining-v1"
SPLITS = ("train", "eval")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass
class PrepareConfig:
    """Settings of `bertkit prepare`: instance lengths, NSP, static/whole-word masking, eval share, shards."""

    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    dupe_factor: int = 1  # >1: that many copies, each with its own fixed mask (static masking, as the original)
    static_masking: bool = False
    whole_word_mask: bool = False
    nsp: bool = True
    eval_fraction: float = 0.02  # share of documents held out for evaluation
    seed: int = 12345
    workers: int = 1
    block_chars: int = 2_000_000
    shard_tokens: int = 64_000_000


# ------------------------------------------------------------------ work on one block (in a worker process)
_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, cfg: PrepareConfig) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tok"] = Tokenizer.from_pretrained(tokenizer_dir)
    _WORKER["cfg"] = cfg
    if cfg.whole_word_mask:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _WORKER["jieba"] = jieba


def _word_starts(sentence: str, enc) -> list[int]:
    """1 where a token starts a word: not a `##` piece and, in Chinese, at a jieba word boundary."""
    starts = [0 if t.startswith("##") else 1 for t in enc.tokens]
    jieba = _WORKER.get("jieba")
    if jieba is not None and _CJK.search(sentence):
        bounds, pos = set(), 0
        for w in jieba.lcut(sentence):
            bounds.add(pos)
            pos += len(w)
        for k, (s, _) in enumerate(enc.offsets):
            if starts[k] and s not in bounds and _CJK.match(sentence[s : s + 1] or " "):
                starts[k] = 0
    return starts


def _process_block(job: tuple[str, int, list[list[str]]]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    split, block_index, docs = job
    tok: Tokenizer = _WORKER["tok"]
    cfg: PrepareConfig = _WORKER["cfg"]
    flat = [s for d in docs for s in d]
    # Whole-word masking needs each token's text and offsets (Rust encodings); otherwise ids alone, mostly by
    # table lookup (Tokenizer.ids_batch), which is several times faster on Chinese text.
    encs = tok._rust.encode_batch(flat, add_special_tokens=False) if cfg.whole_word_mask else None
    ids = [e.ids for e in encs] if encs is not None else tok.ids_batch(flat)
    documents: list[list[list[int]]] = []
    starts: list[list[list[int]]] | None = [] if cfg.whole_word_mask else None
    k = 0
    for d in docs:
        sents, flags = [], []
        for s in d:
            k += 1
            if ids[k - 1]:
                sents.append(ids[k - 1])
                if starts is not None and encs is not None:
                    flags.append(_word_starts(s, encs[k - 1]))
        if sents:
            documents.append(sents)
            if starts is not None:
                starts.append(flags)
    tokens: list[int] = []
    rows: list[tuple[int, int, int]] = []
    flags_out: list[int] = []
    for dupe in range(cfg.dupe_factor):
        rng = np.random.default_rng([cfg.seed, SPLITS.index(split), block_index, dupe])
        for i in range(len(documents)):
            for inst in instances_from_document(
                i, documents, rng, cfg.max_seq_length, cfg.short_seq_prob, starts, cfg.nsp
            ):
                tokens += inst.tokens_a + inst.tokens_b
                rows.append((len(inst.tokens_a), len(inst.tokens_b), inst.nsp_label))
                if inst.starts_a is not None and inst.starts_b is not None:
                    flags_out += inst.starts_a + inst.starts_b
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    return (
        split,
        np.asarray(tokens, dtype=dtype),
        np.asarray(rows, dtype=np.int64).reshape(-1, 3),
        np.asarray(flags_out, dtype=np.uint8) if starts is not None else None,
    )


# ------------------------------------------------------------------ main process: stream, dispatch, write
class _ShardWriter:
    """Appends blocks to the current shard of one split; starts a new shard every `shard_tokens` tokens."""

    def __init__(self, out: Path, split: str, shard_tokens: int, with_starts: bool):
        self.out, self.split, self.shard_tokens, self.with_starts = out, split, shard_tokens, with_starts
        self.shards: list[dict] = []
        self.instances = self.tokens = self.nsp_random = 0
        self._files: dict[str, object] = {}

    def _open_new(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}"
        self.shards.append({"name": name, "instances": 0, "tokens": 0})
        kinds = ("tokens", "index", "starts") if self.with_starts else ("tokens", "index")
        self._files = {k: open(self.out / f"{name}.{k}.bin", "wb") for k in kinds}  # noqa: SIM115 (closed in close())

    def write(self, tokens: np.ndarray, rows: np.ndarray, starts: np.ndarray | None) -> None:
        if len(rows) == 0:
            return
        if not self.shards or self.shards[-1]["tokens"] >= self.shard_tokens:
            self._open_new()
        shard = self.shards[-1]
        lengths = rows[:, 0] + rows[:, 1]
        offsets = shard["tokens"] + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        index = np.column_stack([offsets, rows]).astype(np.int64)
        self._files["tokens"].write(tokens.tobytes())  # type: ignore[attr-defined]
        self._files["index"].write(index.tobytes())  # type: ignore[attr-defined]
        if starts is not None:
            self._files["starts"].write(starts.tobytes())  # type: ignore[attr-defined]
        shard["instances"] += len(rows)
        shard["tokens"] += int(lengths.sum())
        self.instances += len(rows)
        self.tokens += int(lengths.sum())
        self.nsp_random += int(rows[:, 2].sum())

    def close(self) -> None:
        for f in self._files.values():
            f.close()  # type: ignore[attr-defined]
        self._files = {}


def _blocks(corpus: list[Path], cfg: PrepareConfig, stats: dict) -> Iterator[tuple[str, int, list[list[str]]]]:
    """Group documents into (split, block index, documents) jobs of about `block_chars` characters."""
    period = max(2, round(1 / cfg.eval_fraction)) if cfg.eval_fraction > 0 else 0
    pending: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    size = dict.fromkeys(SPLITS, 0)
    count = dict.fromkeys(SPLITS, 0)
    for doc_index, doc in enumerate(iter_documents(corpus)):
        split = "eval" if period and doc_index % period == cfg.seed % period else "train"
        pending[split].append(doc)
        size[split] += sum(len(s) for s in doc)
        stats["documents"][split] += 1
        stats["chars"] += sum(len(s) for s in doc)
        if size[split] >= cfg.block_chars:
            yield split, count[split], pending[split]
            pending[split], size[split] = [], 0
            count[split] += 1
    for split in SPLITS:
        if pending[split]:
            yield split, count[split], pending[split]


def prepare(
    corpus: list[str | Path],
    tokenizer_dir: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Turn corpus files into a pre-training data directory; returns the manifest."""
    cfg = cfg or PrepareConfig()
    corpus_paths = [Path(p) for p in corpus]
    out = Path(out)
    if cfg.max_seq_length < 8:
        raise BertkitError(f"--max-seq-length {cfg.max_seq_length} is too short for [CLS] A [SEP] B [SEP]")
    if cfg.dupe_factor < 1:
        raise BertkitError("--dupe-factor must be at least 1")
    for p in corpus_paths:
        if not p.is_file():
            raise BertkitError(f"corpus file {p} does not exist")
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    if (out / "manifest.json").exists() and not overwrite:
        raise BertkitError(f"{out} already holds prepared data; pass --overwrite to replace it")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok.save_pretrained(tmp / "tokenizer")

    writers = {s: _ShardWriter(tmp, s, cfg.shard_tokens, cfg.whole_word_mask) for s in SPLITS}
    stats = {"documents": dict.fromkeys(SPLITS, 0), "chars": 0}
    bar = tqdm(desc="prepare", unit=" docs", disable=not progress)
    start = time.perf_counter()

    def consume(result) -> None:
        split, tokens, rows, starts = result
        writers[split].write(tokens, rows, starts)
        done = sum(w.tokens for w in writers.values())
        bar.n = sum(stats["documents"].values())
        bar.set_postfix(tokens=f"{done:,}", tok_s=f"{done / max(time.perf_counter() - start, 1e-9):,.0f}")

    jobs = _blocks(corpus_paths, cfg, stats)
    if cfg.workers <= 1:
        _init_worker(str(tokenizer_dir), cfg)
        for job in jobs:
            consume(_process_block(job))
    else:
        ctx = get_context("spawn")  # the Rust tokenizer's threads do not survive fork
        with ProcessPoolExecutor(cfg.workers, ctx, _init_worker, (str(tokenizer_dir), cfg)) as pool:
            inflight: deque = deque()
            for job in jobs:
                inflight.append(pool.submit(_process_block, job))
                if len(inflight) >= 2 * cfg.workers:
                    consume(inflight.popleft().result())
            while inflight:
                consume(inflight.popleft().result())
    bar.close()
    for w in writers.values():
        w.close()
    elapsed = time.perf_counter() - start

    train = writers["train"]
    if train.instances == 0:
        raise BertkitError(
            f"corpus {', '.join(map(str, corpus_paths))} gave no training instances: it is empty, or every "
            "document is too short (a document needs at least two tokens)"
        )
    manifest = {
        "format": FORMAT,
        "config": asdict(cfg),
        "masking": "static" if (cfg.static_masking or cfg.dupe_factor > 1) else "dynamic",
        "vocab_size": tok.vocab_size,
        "token_dtype": "uint16" if tok.vocab_size <= 65535 else "uint32",
        "corpus": [str(p) for p in corpus_paths],
        "documents": stats["documents"],
        "characters": stats["chars"],
        "seconds": round(elapsed, 2),
        "splits": {
            s: {
                "instances": w.instances,
                "tokens": w.tokens,
                "nsp_random_fraction": w.nsp_random / max(w.instances, 1),
                "shards": w.shards,
            }
            for s, w in writers.items()
        },
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return manifest
