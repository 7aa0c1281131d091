"""Right-padding variable-length rows into the (B, T) tensors the encoder takes; the one padding routine that
tokenizer batches, task batches and pre-training batches share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_rows(rows: Sequence[Sequence[int] | np.ndarray], value: int, length: int | None = None) -> torch.Tensor:
    """Stack integer rows into a (B, T) LongTensor padded with `value`; T = `length` or the longest row."""
    T = length if length is not None else max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def encoder_inputs(
    input_ids: Sequence[Sequence[int] | np.ndarray],
    token_type_ids: Sequence[Sequence[int] | np.ndarray],
    pad_id: int,
    length: int | None = None,
) -> dict[str, torch.Tensor]:
    """`input_ids`, `token_type_ids` and `attention_mask` (1 on real tokens), each (B, T)."""
    T = length if length is not None else max(len(r) for r in input_ids)
    lengths = torch.tensor([len(r) for r in input_ids])
    return {
        "input_ids": pad_rows(input_ids, pad_id, T),
        "token_type_ids": pad_rows(token_type_ids, 0, T),
        "attention_mask": (torch.arange(T)[None, :] < lengths[:, None]).long(),  # (B, T)
    }
