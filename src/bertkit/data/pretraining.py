"""Reading a prepared data directory: memory-mapped shards -> masked `[CLS] A [SEP] B [SEP]` examples -> batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bertkit.constants import IGNORE_INDEX
from bertkit.data.config import MANIFEST_FILE
from bertkit.data.masking import MaskingConfig, mask_sequence
from bertkit.data.prepare import FORMAT, SPLITS, token_dtype
from bertkit.errors import BertkitError
from bertkit.files import read_json_object
from bertkit.options import as_whole_number
from bertkit.tokenizer import Tokenizer, encoder_inputs, pad_rows

_AGAIN = "run bertkit prepare again"
_INDEX_ROW_BYTES = 4 * np.dtype(np.int64).itemsize  # (offset, len_a, len_b, nsp_label)
SPLIT_CHOICES = (*SPLITS, "all")


def nsp_notes(manifest: dict, data_dir: str | Path) -> list[str]:
    """Notes on what a prepared directory's NSP pairs can teach or measure: a split whose pairs are all IsNext (a
    corpus of one document: documents are separated by blank lines; a random B comes from another document) makes
    NSP learn a constant, or its held-out accuracy say nothing."""
    if not manifest["config"].get("nsp", True):
        return []
    notes = []
    for split, what in (("train", "NSP learns to answer IsNext always"), ("eval", "its nsp_accuracy says nothing")):
        s = manifest["splits"][split]
        if s["instances"] and s["nsp_random_fraction"] == 0:
            docs = manifest.get("documents", {}).get(split, 0)
            notes.append(
                f"note: the {'training' if split == 'train' else 'held-out'} pairs of {data_dir} are all IsNext "
                f"(from {docs:,} document{'s' if docs != 1 else ''}; a random B comes from another document, and "
                f"documents are separated by blank lines): {what}"
            )
    return notes


def read_manifest(data_dir: str | Path, check_files: bool = True) -> dict:
    """The `manifest.json` of a prepared data directory, checked to be in this version's FORMAT, with every field
    that readers use; with `check_files`, every shard file must also have the size the manifest implies.

    A damaged or incomplete directory is a `BertkitError` naming the file (or field) and the expected value.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_FILE
    if not path.is_file():
        raise BertkitError(f"{data_dir} is not a prepared data directory (no manifest.json); run `bertkit prepare`")
    manifest = read_json_object(path, f"the directory is damaged: {_AGAIN}")
    if manifest.get("format") != FORMAT:
        raise BertkitError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; {_AGAIN}")
    _check_fields(manifest, path)
    if check_files:
        check_shard_files(data_dir, manifest)
    return manifest


def _field(manifest: dict, keys: tuple[str | int, ...], kind: type, path: Path, choices: tuple = ()):
    """`manifest[k0][k1]...`, checked to exist, to be of `kind` (a bool is not an int; counts are not negative)
    and, when `choices` are given, to be one of them."""
    label = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
    value: object = manifest
    for key in keys:
        if isinstance(key, int):
            present = isinstance(value, list) and key < len(value)
        else:
            present = isinstance(value, dict) and key in value
        if not present:
            raise BertkitError(f"{path}: field {label} is missing; the directory is damaged: {_AGAIN}")
        value = value[key]  # type: ignore[index]
    wrong = not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
    if wrong or (choices and value not in choices) or (isinstance(value, int) and value < 0):
        expected = " or ".join(map(repr, choices)) if choices else kind.__name__
        raise BertkitError(f"{path}: field {label} is {value!r}, expected {expected}; {_AGAIN}")
    return value


def _check_fields(manifest: dict, path: Path) -> None:
    """Every field that the readers of a data directory use, with its type; shard counts add up."""
    _field(manifest, ("config", "max_seq_length"), int, path)
    _field(manifest, ("config", "whole_word_mask"), bool, path)
    _field(manifest, ("masking",), str, path, ("dynamic", "static"))
    dtype = _field(manifest, ("token_dtype",), str, path, ("uint16", "uint32"))
    vocab_size = _field(manifest, ("vocab_size",), int, path)
    if dtype == "uint16" and token_dtype(vocab_size) != np.uint16:
        raise BertkitError(f"{path}: token_dtype uint16 cannot hold a vocabulary of {vocab_size}; {_AGAIN}")
    for split in SPLITS:
        totals = {key: _field(manifest, ("splits", split, key), int, path) for key in ("instances", "tokens")}
        shards = _field(manifest, ("splits", split, "shards"), list, path)
        for k in range(len(shards)):
            name = _field(manifest, ("splits", split, "shards", k, "name"), str, path)
            if not name or Path(name).name != name:
                raise BertkitError(f"{path}: splits.{split}.shards[{k}].name {name!r} is not a file name; {_AGAIN}")
            for key in ("instances", "tokens"):
                _field(manifest, ("splits", split, "shards", k, key), int, path)
        for key, total in totals.items():
            added = sum(shard[key] for shard in shards)
            if added != total:
                raise BertkitError(
                    f"{path}: splits.{split}.{key} is {total:,}, but its shards add up to {added:,}; "
                    f"the directory is damaged: {_AGAIN}"
                )


def check_shard_files(data_dir: str | Path, manifest: dict) -> None:
    """Every shard file of every split has the size the manifest implies (from `stat`; nothing is read).

    Catches a truncated or missing file, a renamed shard and a changed `token_dtype`.
    """
    data_dir = Path(data_dir)
    dtype = manifest["token_dtype"]
    itemsize = np.dtype(dtype).itemsize
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            n_tokens, n_rows = shard["tokens"], shard["instances"]
            expected = {
                "tokens": (n_tokens * itemsize, f"{n_tokens:,} tokens of {dtype}"),
                "index": (n_rows * _INDEX_ROW_BYTES, f"{n_rows:,} instances of {_INDEX_ROW_BYTES} bytes"),
            }
            if manifest["config"]["whole_word_mask"]:
                expected["starts"] = (n_tokens, f"{n_tokens:,} word-start flags of 1 byte")
            for kind, (size, what) in expected.items():
                file = data_dir / f"{shard['name']}.{kind}.bin"
                try:
                    actual = file.stat().st_size
                except FileNotFoundError:
                    raise BertkitError(
                        f"{file} is missing (manifest.json lists it: {size:,} bytes, {what}); "
                        f"the directory is damaged or incomplete: {_AGAIN}"
                    ) from None
                if actual != size:
                    raise BertkitError(
                        f"{file} has {actual:,} bytes, the manifest expects {size:,} ({what}); "
                        f"the directory is damaged or incomplete: {_AGAIN}"
                    )


class Shard(NamedTuple):
    """One shard of a split, memory-mapped: its instances' tokens, their (offset, len A, len B, is-random-next)
    rows, the word-start flags (whole-word masking), the files' name base, whether its split is masked statically,
    and the index of its split's first instance among the dataset's (an instance's mask depends on its index within
    its own split, so "all" is exactly "train" followed by "eval")."""

    tokens: np.ndarray  # (tokens,) uint16 or uint32 ids
    index: np.ndarray  # (instances, 4) int64
    starts: np.ndarray | None  # (tokens,) uint8, or None
    base: Path
    static: bool
    split_start: int


class PretrainingData(torch.utils.data.Dataset):
    """Instances of one split ("train" or "eval"), or of both ("all": train then eval). Index with `(epoch, i)`:
    dynamic masking draws a new mask per epoch.

    Opening checks the manifest and the size of every shard file, so a damaged directory fails here, not hours
    into training.
    """

    def __init__(self, data_dir: str | Path, split: str = "train", masking: MaskingConfig | None = None, seed: int = 0):
        if split not in SPLIT_CHOICES:
            raise BertkitError(f"split {split!r} does not exist: choose one of {', '.join(SPLIT_CHOICES)}")
        if masking is not None and not isinstance(masking, MaskingConfig):
            raise BertkitError(f"masking must be a MaskingConfig, got {type(masking).__name__}")
        self.dir = Path(data_dir)
        self.split = split
        self.manifest = read_manifest(self.dir)
        try:
            self.tokenizer = Tokenizer.from_pretrained(self.dir / "tokenizer")
        except BertkitError as e:  # e.g. its vocab.txt changed since prepare saved it: the ids no longer fit
            raise BertkitError(f"{e}; the data directory is damaged: {_AGAIN}") from None
        if self.tokenizer.vocab_size != self.manifest["vocab_size"]:
            raise BertkitError(
                f"{self.dir / 'tokenizer'} has {self.tokenizer.vocab_size} tokens, the manifest "
                f"{self.manifest['vocab_size']}: the tokenizer is not the one the data was made with; {_AGAIN}"
            )
        self.masking = (masking or MaskingConfig()).for_length(self.manifest["config"]["max_seq_length"])
        if self.masking.whole_word and not self.manifest["config"]["whole_word_mask"]:
            raise BertkitError(f"{data_dir} was prepared without --whole-word-mask; prepare it again with it")
        # Evaluation always uses one fixed mask, so its figures are comparable from step to step.
        self.static = split != "train" or self.manifest["masking"] == "static"
        self.seed = as_whole_number(seed, "seed", 0)  # numpy's generators take no negative seed
        dtype = np.dtype(self.manifest["token_dtype"])
        self.shards: list[Shard] = []
        for part in SPLITS if split == "all" else (split,):
            part_static = part != "train" or self.manifest["masking"] == "static"
            part_start = sum(len(s.index) for s in self.shards)
            for shard in self.manifest["splits"][part]["shards"]:
                base = self.dir / shard["name"]
                has_tokens = shard["tokens"] > 0  # an empty file cannot be memory-mapped
                tokens = np.memmap(f"{base}.tokens.bin", dtype=dtype, mode="r") if has_tokens else np.zeros(0, dtype)
                index = np.fromfile(f"{base}.index.bin", dtype=np.int64).reshape(-1, 4)
                starts = None
                if self.manifest["config"]["whole_word_mask"] and has_tokens:
                    starts = np.memmap(f"{base}.starts.bin", dtype=np.uint8, mode="r")
                self.shards.append(Shard(tokens, index, starts, base, part_static, part_start))
        self.bounds = np.cumsum([0] + [len(s.index) for s in self.shards])
        tok = self.tokenizer
        self.random_ids = np.asarray(
            [i for i, t in enumerate(tok.vocab) if i not in tok.special_ids and not t.startswith("[unused")]
        )

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, np.ndarray]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise TypeError(f"instance indices are whole numbers, not {type(i).__name__}")
        i = int(i) + (len(self) if i < 0 else 0)  # from the end, as a sequence counts
        if not 0 <= i < len(self):
            raise IndexError(f"instance {key} is out of range: the {self.split} split holds {len(self)}")
        s = int(np.searchsorted(self.bounds, i, side="right")) - 1
        tokens, index, starts, base, static, split_start = self.shards[s]
        row = i - int(self.bounds[s])
        offset, len_a, len_b, nsp = (int(v) for v in index[row])
        if offset < 0 or len_a < 1 or len_b < 1 or offset + len_a + len_b > len(tokens):
            raise BertkitError(
                f"{base}.index.bin: row {row} points outside {base.name}.tokens.bin ({len(tokens):,} tokens); "
                f"the directory is damaged: {_AGAIN}"
            )
        tok = self.tokenizer
        a = tokens[offset : offset + len_a].astype(np.int64)
        b = tokens[offset + len_a : offset + len_a + len_b].astype(np.int64)
        ids = np.concatenate([[tok.cls_id], a, [tok.sep_id], b, [tok.sep_id]])
        special = np.zeros(len(ids), dtype=bool)
        special[[0, len_a + 1, len(ids) - 1]] = True
        word_starts = None
        if starts is not None and self.masking.whole_word:
            sa = starts[offset : offset + len_a]
            sb = starts[offset + len_a : offset + len_a + len_b]
            word_starts = np.concatenate([[1], sa, [1], sb, [1]]).astype(np.uint8)
        rng = np.random.default_rng([self.seed, 0 if static else epoch + 1, i - split_start])
        masked, labels = mask_sequence(ids, special, rng, self.masking, tok.mask_id, self.random_ids, word_starts)
        types = np.zeros(len(ids), dtype=np.int64)
        types[len_a + 2 :] = 1
        return {"input_ids": masked, "token_type_ids": types, "mlm_labels": labels, "nsp_labels": np.int64(nsp)}


def collate(items: list[dict[str, np.ndarray]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (dynamic padding)."""
    out = encoder_inputs([x["input_ids"] for x in items], [x["token_type_ids"] for x in items], pad_id)
    out["mlm_labels"] = pad_rows([x["mlm_labels"] for x in items], IGNORE_INDEX, out["input_ids"].shape[1])
    out["nsp_labels"] = torch.tensor([int(x["nsp_labels"]) for x in items], dtype=torch.long)
    return out


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(epoch, i)` keys: a seeded permutation per epoch, this rank's share of it, from a start position.

    `start` counts samples of the global (all-rank) order already consumed, so a run resumes at the same place
    whatever the world size, without replaying data. Every rank gets the same number of samples: the last
    `remaining % world` of an epoch are left out under several processes, so that each rank takes as many steps
    (an extra step on one rank would wait forever for the others' gradients) with batches of equal size.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch, self.start, self.rank, self.world = n, seed, epoch, start, rank, world

    def order(self) -> np.ndarray:
        """This epoch's global (all-rank) order: a permutation seeded by (seed, epoch)."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()[self.start :]
        for i in order[: len(self) * self.world][self.rank :: self.world]:
            yield self.epoch, int(i)

    def __len__(self) -> int:
        return max(self.n - self.start, 0) // self.world
