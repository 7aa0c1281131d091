"""`bertkit prepare`: corpus files -> tokenized NSP instances in compact binary shards, streaming.

Layout of a data directory:
  manifest.json                      settings, counts, shard list (moved in last: its presence means complete)
  tokenizer/                         the tokenizer the ids belong to
  {split}-{k:05d}.tokens.bin         token ids of A then B for every instance (uint16 or uint32)
  {split}-{k:05d}.index.bin          int64 rows (offset, len_a, len_b, nsp_label)
  {split}-{k:05d}.starts.bin         uint8 word-start flags per token (whole-word masking only)

Memory stays flat in corpus size: documents are grouped into blocks of about `block_chars` characters (and at
least `MIN_BLOCK_DOCUMENTS` documents), each block is turned into instances on its own (random NotNext segments come
from the same block, as the original's came from the file it was given), and at most two blocks per worker are in
flight. Blocks and their random generators depend only on the corpus and the seed, so the
output is the same for any number of workers.

Nothing in the output directory is touched until the new data is complete: it is written to a temporary folder
inside the output directory (removed on any error, and by the next run if a kill left it), then prepare's own
earlier entries are replaced and the new ones moved in, manifest.json last. Other files in the directory stay.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bertkit.data.config import MANIFEST_FILE, MIN_BLOCK_DOCUMENTS, PrepareConfig
from bertkit.data.instances import Block, Span, gather_spans, instance_spans
from bertkit.data.sentences import iter_documents
from bertkit.errors import BertkitError
from bertkit.files import (
    OWNER_FILE,
    BytesRead,
    check_output_not_input,
    claim_output_dir,
    is_disk_full,
    own_entries,
    remove_entries,
)
from bertkit.options import check_config, check_switches
from bertkit.progress import make_bar
from bertkit.tokenizer import Tokenizer, TokenSpans, contains_cjk, is_cjk

FORMAT = "bertkit-pretraining-v1"
SPLITS = ("train", "eval")
# The entries prepare writes directly in its output directory: the only ones `--overwrite` replaces.
OWN_ENTRIES = (MANIFEST_FILE, "tokenizer", *(f"{s}-[0-9][0-9][0-9][0-9][0-9].*.bin" for s in SPLITS))
# The temporary folder (inside the output directory, so the final moves are renames on one file system) and the
# file that marks it as prepare's, so that a later run may remove one that a kill left behind.
_TEMP_PREFIX, _TEMP_SUFFIX, _TEMP_MARKER = ".bertkit-prepare-", ".partial", "BERTKIT_PREPARE_IN_PROGRESS"


# ------------------------------------------------------------------ work on one block (in a worker process)
_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, cfg: PrepareConfig) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    # A corpus that mentions "[MASK]" or "[SEP]" means the text, as the original create_pretraining_data read it:
    # read as special tokens, they would put separators and masks inside A and B.
    tok.special_tokens_in_text = False
    _WORKER["tok"] = tok
    _WORKER["cfg"] = cfg
    _WORKER["starts_word"] = np.array([not t.startswith("##") for t in tok.vocab])  # by token id
    if cfg.whole_word_mask:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _WORKER["jieba"] = jieba


def _word_starts(sentence: str, enc: TokenSpans) -> list[int]:
    """1 where a token starts a word: not a `##` piece and, in Chinese, at a jieba word boundary."""
    starts = _WORKER["starts_word"][enc.ids].astype(np.uint8).tolist()
    jieba = _WORKER.get("jieba")
    if jieba is not None and contains_cjk(sentence, bmp_only=True):
        bounds, pos = set(), 0
        for w in jieba.lcut(sentence):
            bounds.add(pos)
            pos += len(w)
        for k, (s, _) in enumerate(enc.offsets):
            if starts[k] and s not in bounds and is_cjk(sentence[s : s + 1], bmp_only=True):
                starts[k] = 0
    return starts


BlockResult = tuple[str, np.ndarray, np.ndarray, np.ndarray | None, int]


def _process_block(job: tuple[str, int, list[list[str]]]) -> BlockResult:
    """Tokenize one block of documents and build its instances: (split, tokens, (len_a, len_b, nsp) rows, flags,
    number of sentences cut into pieces)."""
    with _gc_paused():
        return _build_block(*job)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Run without the cyclic garbage collector. A block holds hundreds of thousands of small lists that form no
    cycles (reference counting frees them); collector passes over them, and over the large lists of ids, found
    nothing and took a large share of prepare's time (`python benchmarks/prepare_memory.py` measures the whole)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _build_block(split: str, block_index: int, docs: list[list[str]]) -> BlockResult:
    tok: Tokenizer = _WORKER["tok"]
    cfg: PrepareConfig = _WORKER["cfg"]
    flat = [s for d in docs for s in d]
    flags: np.ndarray | None = None
    if cfg.whole_word_mask:
        # Whole-word masking needs each token's character span as well, for the word starts.
        encs = tok.encode_with_offsets(flat)
        counts = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int64, count=int(counts.sum()))
        word_starts = (_word_starts(s, e) for s, e in zip(flat, encs, strict=True) if e.ids)
        flags = np.fromiter(itertools.chain.from_iterable(word_starts), dtype=np.uint8, count=len(ids))
    else:
        ids, counts = tok.ids_flat(flat)
    # Where a sentence may be cut (into pieces, or into A and B): at a word's start, so that no B begins with a
    # `##` piece (and, with whole-word masking, no Chinese word is split either).
    word_starts = flags.astype(bool) if flags is not None else _WORKER["starts_word"][ids]
    # Sentences without a token, and then documents without a sentence, are left out.
    doc_of_sentence = np.repeat(np.arange(len(docs)), [len(d) for d in docs])[counts > 0]
    counts = counts[counts > 0]
    counts, doc_of_sentence, cut = _cut_long_sentences(counts, doc_of_sentence, cfg.max_seq_length - 3, word_starts)
    token_starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    doc_starts = np.flatnonzero(np.diff(doc_of_sentence, prepend=-1, append=len(docs))).tolist()
    block = Block(token_starts, doc_starts, word_starts)
    spans: list[Span] = []
    # Held-out pairs once: copies there would only multiply the time evaluation takes (its masks are fixed anyway).
    for dupe in range(cfg.dupe_factor if split == "train" else 1):
        rng = np.random.default_rng([cfg.seed, SPLITS.index(split), block_index, dupe])
        for i in range(block.num_documents):
            spans += instance_spans(i, block, rng, cfg.max_seq_length, cfg.short_seq_prob, cfg.nsp)
    tokens, rows = gather_spans(spans, ids.astype(token_dtype(tok.vocab_size)))
    return split, tokens, rows, (gather_spans(spans, flags)[0] if flags is not None else None), cut


def _cut_long_sentences(
    counts: np.ndarray, doc_of_sentence: np.ndarray, max_tokens: int, word_starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cut each sentence of more than `max_tokens` tokens into pieces of at most `ceil(max_tokens / 2)` tokens,
    each ending before the last word start that fits (where a word is longer, at the limit): the new token counts,
    each piece's document, and how many sentences were cut. `word_starts` flags the tokens that start a word.

    The original keeps such a sentence whole, and truncation then drops all but `max_tokens` of its tokens: a
    paragraph whose sentence ends were not recognised (one long line, or marks the splitter does not know) lost
    nearly all its text. Pieces of one sentence are consecutive text, so an IsNext pair across them is still true;
    two pieces just fill a chunk, so an IsNext pair keeps nearly all of both, and a NotNext A of one piece leaves
    room for a random B (pieces as long as `max_tokens` would leave none, and it would be cut from A)."""
    long = np.flatnonzero(counts > max_tokens)
    if not len(long):
        return counts, doc_of_sentence, 0
    piece = -(-max_tokens // 2)
    sentence_starts = np.cumsum(counts) - counts
    new_counts: list = []  # runs of sentences left whole, and each long one's pieces
    owner: list = []  # for each new sentence: the one it comes from
    done = 0
    for s in long.tolist():
        begin, end = int(sentence_starts[s]), int(sentence_starts[s] + counts[s])
        lengths = []
        while end - begin > piece:
            fits = np.flatnonzero(word_starts[begin + 1 : begin + piece + 1])  # where the next piece may start
            step = int(fits[-1]) + 1 if len(fits) else piece
            lengths.append(step)
            begin += step
        lengths.append(end - begin)
        new_counts += [counts[done:s], lengths]
        owner += [np.arange(done, s), np.full(len(lengths), s)]
        done = s + 1
    new_counts.append(counts[done:])
    owner.append(np.arange(done, len(counts)))
    new_counts, owner = np.concatenate(new_counts).astype(counts.dtype), np.concatenate(owner)
    return new_counts, doc_of_sentence[owner], len(long)


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
        self._write("tokens", tokens)
        self._write("index", index)
        if starts is not None:
            self._write("starts", starts)
        shard["instances"] += len(rows)
        shard["tokens"] += int(lengths.sum())
        self.instances += len(rows)
        self.tokens += int(lengths.sum())
        self.nsp_random += int(rows[:, 2].sum())

    def _write(self, kind: str, array: np.ndarray) -> None:
        f = self._files[kind]
        with _naming(f.name):  # type: ignore[attr-defined]
            f.write(array.tobytes())  # type: ignore[attr-defined]

    def close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            with _naming(f.name):  # type: ignore[attr-defined]
                f.close()  # type: ignore[attr-defined]


@contextlib.contextmanager
def _naming(path: str | Path) -> Iterator[None]:
    """Attach `path` to an OSError raised without a file name (a failed write or flush), so it can be reported."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise


def _is_eval_document(doc_index: int, share: Fraction, offset: int) -> bool:
    """Whether document `doc_index` is held out: `share` of the documents, spread evenly.

    For a share of 1/n this is every n-th document, starting at the seed's offset.
    """
    return (doc_index + offset) * share.numerator % share.denominator < share.numerator


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The shards' type of token ids: uint16 where every id of the vocabulary fits (half the disk and memory of
    uint32; bert-base-chinese's 21,128 tokens do), else uint32."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def _blocks(
    corpus: list[Path], cfg: PrepareConfig, stats: dict, read: BytesRead | None = None
) -> Iterator[tuple[str, int, list[list[str]]]]:
    """Group documents into (split, block index, documents) jobs of about `block_chars` characters and at least
    `MIN_BLOCK_DOCUMENTS` documents (a random B comes from another document of the same block: a document as long
    as a block, alone in one, had no NotNext pairs). Each split's last block is held back until the corpus ends,
    so that a remainder of fewer documents joins it instead of making a block of its own."""
    share = Fraction(cfg.eval_fraction).limit_denominator(1_000_000)
    offset = -cfg.seed % share.denominator  # with a share of 1/n, document `seed mod n` is the first held out
    pending: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    held: dict[str, tuple[str, int, list[list[str]]] | None] = dict.fromkeys(SPLITS)
    size = dict.fromkeys(SPLITS, 0)
    count = dict.fromkeys(SPLITS, 0)
    for doc_index, doc in enumerate(iter_documents(corpus, read)):
        split = "eval" if _is_eval_document(doc_index, share, offset) else "train"
        pending[split].append(doc)
        size[split] += sum(len(s) for s in doc)
        stats["documents"][split] += 1
        stats["chars"] += sum(len(s) for s in doc)
        if size[split] >= cfg.block_chars and len(pending[split]) >= MIN_BLOCK_DOCUMENTS:
            if held[split]:
                yield held[split]
            held[split] = (split, count[split], pending[split])
            pending[split], size[split] = [], 0
            count[split] += 1
    for split in SPLITS:
        last, rest = held[split], pending[split]
        if last and len(rest) < MIN_BLOCK_DOCUMENTS:
            last, rest = (split, last[1], last[2] + rest), []
        if last:
            yield last
        if rest:
            yield split, count[split], rest


def _check_settings(cfg: PrepareConfig) -> None:
    # Each value's range is checked when the config is made (PrepareConfig's fields, as their flags check them).
    if cfg.shard_tokens < 1:
        raise BertkitError("shard_tokens must be positive")
    if cfg.whole_word_mask and importlib.util.find_spec("jieba") is None:
        raise BertkitError("--whole-word-mask finds Chinese word starts with jieba: pip install 'bertkit[zh]'")


def _check_corpus(corpus: list[str | Path]) -> list[Path]:
    if isinstance(corpus, str | os.PathLike):
        raise BertkitError(f"corpus must be a list of files, got the single path {os.fspath(corpus)!r}: put it in "
                           "a list")  # fmt: skip
    if not corpus:
        raise BertkitError("no corpus files given")
    paths = [Path(p) for p in corpus]
    for p in paths:
        if p.is_dir():
            raise BertkitError(f"corpus {p} is a directory: give its files, e.g. {p / '*.txt'}")
        if not p.is_file():
            raise BertkitError(f"corpus file {p} does not exist")
    return paths


def _is_prepared(out: Path) -> bool:
    """Whether `out` holds a data directory of this format that a bertkit prepare wrote before it marked its
    outputs (any program may write a manifest.json: its "format" says whose it is)."""
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _remove_stale_temporary_folders(out: Path) -> None:
    """Remove what an earlier run that was killed left: temporary folders that carry prepare's marker."""
    for p in out.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        if p.is_dir() and not p.is_symlink() and (p / _TEMP_MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace prepare's own entries in `out` by the complete new ones in `tmp`; other entries stay."""
    # The old manifest goes first and the new one comes last, so that a directory caught half-way (a kill between
    # these renames) never looks complete.
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    remove_entries(own_entries(out, OWN_ENTRIES))
    for p in sorted(tmp.iterdir()):
        if p.name not in (MANIFEST_FILE, _TEMP_MARKER):
            os.replace(p, out / p.name)
    os.replace(tmp / MANIFEST_FILE, out / MANIFEST_FILE)
    shutil.rmtree(tmp)


def prepare(
    corpus: list[str | Path],
    tokenizer_dir: str | Path,
    out: str | Path,
    cfg: PrepareConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Turn corpus files into a pre-training data directory; returns the manifest.

    `out` may be new, empty, prepare's own earlier output (replaced with `overwrite`), or, with `overwrite`, a
    directory holding other files too: those stay. An `out` that is or holds a corpus file or the tokenizer is
    refused. On any error (a full disk, Ctrl-C included) `out` is left as it was.

    With `cfg.workers` above 1 the workers are started by "spawn" (the Rust tokenizer's threads do not survive a
    fork): each imports the calling script afresh, so a script that calls `prepare` at its top level must do so
    under `if __name__ == "__main__":`, as multiprocessing asks.
    """
    cfg = PrepareConfig() if cfg is None else cfg
    check_config(cfg, PrepareConfig)
    if not isinstance(tokenizer_dir, str | os.PathLike):
        raise BertkitError(f"tokenizer_dir must be the folder of a saved tokenizer (Tokenizer.save_pretrained "
                           f"writes one), got {type(tokenizer_dir).__name__}")  # fmt: skip
    check_switches(overwrite=overwrite, progress=progress)
    _check_settings(cfg)
    corpus_paths = _check_corpus(corpus)
    out = Path(out)
    inputs = [*corpus_paths, Path(tokenizer_dir)]
    check_output_not_input(out, inputs)
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    if out.is_dir():
        _remove_stale_temporary_folders(out)
    created = not out.exists()
    # Only the checks here (input, non-empty, --overwrite): prepare's own earlier entries are replaced at the end,
    # once the new data is complete, so a run that fails leaves them as they were.
    claim_output_dir(
        out,
        OWN_ENTRIES,
        command="prepare",
        inputs=inputs,
        overwrite=overwrite,
        is_own_output=_is_prepared(out),
        replace_later=True,
        what="prepared data directory",
    )
    tmp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=out))
    try:
        (tmp / _TEMP_MARKER).write_text("bertkit prepare writes here; left by a killed run, it is safe to delete\n")
        manifest = _write_data(corpus_paths, tokenizer_dir, tok, tmp, cfg, progress)
        _move_into_place(tmp, out)
    except BaseException as e:  # KeyboardInterrupt too: nothing of this run may stay behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / MANIFEST_FILE).is_file():  # no earlier output of prepare's here: nothing is its own
            (out / OWNER_FILE).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        if isinstance(e, OSError) and is_disk_full(e):
            where = Path(e.filename) if e.filename else out
            if where.is_relative_to(tmp):
                where = out / where.relative_to(tmp)  # where the file was going, not the folder just removed
            raise BertkitError(
                f"disk full at {where}: {out} was left as it was; free some space (or choose another --out) "
                "and run bertkit prepare again"
            ) from None
        raise
    return manifest


def _write_data(
    corpus_paths: list[Path], tokenizer_dir: str | Path, tok: Tokenizer, tmp: Path, cfg: PrepareConfig, progress: bool
) -> dict:
    """Write the tokenizer, the shards and manifest.json of a complete data directory into `tmp`."""
    with _naming(tmp / "tokenizer"):
        tok.save_pretrained(tmp / "tokenizer")
    writers = {s: _ShardWriter(tmp, s, cfg.shard_tokens, cfg.whole_word_mask) for s in SPLITS}
    stats = {"documents": dict.fromkeys(SPLITS, 0), "chars": 0, "sentences_cut": 0}
    # The bar counts the corpus's bytes, whose total is known from the start, so it shows an ETA; each block moves
    # it to where reading stood when the block was formed (blocks are written in the order they were formed).
    bar = make_bar(desc="prepare", total=sum(p.stat().st_size for p in corpus_paths), unit="B", unit_scale=True,
               unit_divisor=1024, disable=not progress)  # fmt: skip
    read, read_at_block = BytesRead(), deque()
    start = time.perf_counter()

    def consume(result: BlockResult) -> None:
        split, tokens, rows, starts, cut = result
        writers[split].write(tokens, rows, starts)
        stats["sentences_cut"] += cut
        done = sum(w.tokens for w in writers.values())
        bar.set_postfix(docs=f"{sum(stats['documents'].values()):,}", tokens=f"{done:,}",
                        tok_s=f"{done / max(time.perf_counter() - start, 1e-9):,.0f}", refresh=False)  # fmt: skip
        bar.update(read_at_block.popleft() - bar.n)

    def marked(jobs: Iterator[tuple[str, int, list[list[str]]]]) -> Iterator[tuple[str, int, list[list[str]]]]:
        for job in jobs:
            read_at_block.append(read.n)
            yield job

    jobs = marked(_blocks(corpus_paths, cfg, stats, read))
    try:
        if cfg.workers <= 1:
            _init_worker(str(tokenizer_dir), cfg)
            for job in jobs:
                consume(_process_block(job))
        else:
            ctx = get_context("spawn")  # the Rust tokenizer's threads do not survive fork
            pool = ProcessPoolExecutor(cfg.workers, ctx, _init_worker, (str(tokenizer_dir), cfg))
            try:
                inflight: deque = deque()
                for job in jobs:
                    inflight.append(pool.submit(_process_block, job))
                    if len(inflight) >= 2 * cfg.workers:
                        consume(inflight.popleft().result())
                while inflight:
                    consume(inflight.popleft().result())
            finally:
                pool.shutdown(cancel_futures=True)  # after an error, do not run the queued blocks first
        for w in writers.values():
            w.close()
    finally:
        bar.close()
        for w in writers.values():
            with contextlib.suppress(OSError):  # after a failed write, closing may fail again; the folder goes
                w.close()
    elapsed = time.perf_counter() - start

    # An evaluation-only directory (--eval-fraction 1) needs held-out instances; any other, training ones.
    needed = "eval" if cfg.eval_fraction == 1 else "train"
    if writers[needed].instances == 0:
        kind = "held-out" if needed == "eval" else "training"
        raise BertkitError(
            f"corpus {', '.join(map(str, corpus_paths))} gave no {kind} instances: it is empty, or every "
            "document is too short (a document needs at least two tokens)"
        )
    manifest = {
        "format": FORMAT,
        "config": asdict(cfg),
        "masking": "static" if (cfg.static_masking or cfg.dupe_factor > 1) else "dynamic",
        "vocab_size": tok.vocab_size,
        "token_dtype": np.dtype(token_dtype(tok.vocab_size)).name,
        "corpus": [str(p) for p in corpus_paths],
        "documents": stats["documents"],
        "characters": stats["chars"],
        # Sentences longer than an instance's room for A and B, cut into pieces that fit (`_cut_long_sentences`).
        "sentences_cut": stats["sentences_cut"],
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
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    with _naming(tmp / MANIFEST_FILE):
        (tmp / MANIFEST_FILE).write_text(text, encoding="utf-8")
    return manifest


def cut_sentences_note(manifest: dict) -> str | None:
    """A note when sentences had to be cut to fit an instance: often the sign of sentence ends that were not
    recognised (a document on one line without the end marks `split_sentences` knows), so NSP's sentence
    boundaries there are arbitrary."""
    cut = manifest.get("sentences_cut", 0)
    if not cut:
        return None
    room = manifest["config"]["max_seq_length"] - 3
    return (
        f"note: {cut:,} sentence{'s' if cut != 1 else ''} of the corpus had more than {room} tokens (an instance's "
        f"room for A and B) and {'were' if cut != 1 else 'was'} cut into pieces rather than truncated; sentences end "
        "at line ends, at 。！？；…, at . ! ? before a space, and at . ! ? ; between a Chinese character and the next: "
        "does the corpus use them?"
    )
