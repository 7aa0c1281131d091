"""The training batches of one epoch, from any position in it, on any rank: what makes resuming exact.

Each epoch visits the dataset in its own seeded order (`EpochSampler`), split across the ranks; a resumed run
starts a new loader at the sample where its checkpoint was, so no sample is skipped or seen twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from bertkit.data.pretraining import EpochSampler

Batch = dict[str, torch.Tensor]
# (epoch, samples of the epoch's global order already consumed, rank, world size) -> this rank's batches
LoaderFn = Callable[[int, int, int, int], Iterable[Batch]]


def epoch_loader(
    dataset: torch.utils.data.Dataset,
    collate_fn: Callable[[Sequence[Any]], Batch],
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> LoaderFn:
    """A `LoaderFn` over `dataset`, which is indexed by `(epoch, i)` keys (so that an item may differ between
    epochs, e.g. its masking) and batched by `collate_fn`.

    `num_workers`: loading processes (0: in this one). `pin_memory`: page-locked batches, for asynchronous copies
    to a GPU."""

    def batches(epoch: int, start: int, rank: int, world: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(len(dataset), seed, epoch, start, rank, world),
            collate_fn=collate_fn,
            num_workers=num_workers,
            # Its own generator: creating an iterator must not draw from the global RNG (dropout), or a resumed
            # run, which creates one more, would train differently from an uninterrupted one.
            generator=torch.Generator().manual_seed(seed),
            pin_memory=pin_memory,
        )

    return batches
