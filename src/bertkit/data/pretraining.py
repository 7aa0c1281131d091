"""Reading a prepared data directory: memory-mapped shards -> masked `[CLS] A [SEP] B [SEP]` examples -> batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bertkit.data.masking import MaskingConfig, mask_sequence
from bertkit.data.padding import encoder_inputs, pad_rows
from bertkit.data.prepare import FORMAT
from bertkit.errors import BertkitError
from bertkit.model import IGNORE_INDEX
from bertkit.tokenizer import Tokenizer


def read_manifest(data_dir: str | Path) -> dict:
    """The `manifest.json` of a prepared data directory, checked to be in this version's FORMAT."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise BertkitError(f"{data_dir} is not a prepared data directory (no manifest.json); run `bertkit prepare`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise BertkitError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class PretrainingData(torch.utils.data.Dataset):
    """Instances of one split. Index with `(epoch, i)`: dynamic masking draws a new mask per epoch."""

    def __init__(self, data_dir: str | Path, split: str = "train", masking: MaskingConfig | None = None, seed: int = 0):
        self.dir = Path(data_dir)
        self.manifest = read_manifest(self.dir)
        self.tokenizer = Tokenizer.from_pretrained(self.dir / "tokenizer")
        self.masking = masking or MaskingConfig()
        if self.masking.whole_word and not self.manifest["config"]["whole_word_mask"]:
            raise BertkitError(f"{data_dir} was prepared without --whole-word-mask; prepare it again with it")
        # Evaluation always uses one fixed mask, so its figures are comparable from step to step.
        self.static = split != "train" or self.manifest["masking"] == "static"
        self.seed = seed
        dtype = np.dtype(self.manifest["token_dtype"])
        self.shards = []
        for shard in self.manifest["splits"][split]["shards"]:
            base = self.dir / shard["name"]
            tokens = np.memmap(f"{base}.tokens.bin", dtype=dtype, mode="r") if shard["tokens"] else np.zeros(0, dtype)
            index = np.fromfile(f"{base}.index.bin", dtype=np.int64).reshape(-1, 4)
            starts = None
            if self.manifest["config"]["whole_word_mask"] and shard["tokens"]:
                starts = np.memmap(f"{base}.starts.bin", dtype=np.uint8, mode="r")
            self.shards.append((tokens, index, starts))
        self.bounds = np.cumsum([0] + [len(s[1]) for s in self.shards])
        tok = self.tokenizer
        self.random_ids = np.asarray(
            [i for i, t in enumerate(tok.vocab) if i not in tok.special_ids and not t.startswith("[unused")]
        )

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, np.ndarray]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        s = int(np.searchsorted(self.bounds, i, side="right")) - 1
        tokens, index, starts = self.shards[s]
        offset, len_a, len_b, nsp = (int(v) for v in index[i - self.bounds[s]])
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
        rng = np.random.default_rng([self.seed, 0 if self.static else epoch + 1, i])
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
    whatever the world size, without replaying data.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world: int = 1, shuffle=True):
        self.n, self.seed, self.epoch, self.start, self.rank, self.world = n, seed, epoch, start, rank, world
        self.shuffle = shuffle

    def order(self) -> np.ndarray:
        """This epoch's global (all-rank) order: a permutation seeded by (seed, epoch), or 0..n-1."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()[self.start :]
        for i in order[self.rank :: self.world]:
            yield self.epoch, int(i)

    def __len__(self) -> int:
        remaining = max(self.n - self.start, 0)
        return len(range(self.rank, remaining, self.world))
