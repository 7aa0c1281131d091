"""Small pieces of the data layer that need no shared data: the epoch sampler and the document reader."""

from __future__ import annotations

from pathlib import Path

from bertkit.data.pretraining import EpochSampler
from bertkit.data.sentences import iter_documents


def test_epoch_sampler_splits_one_seeded_order_across_ranks_and_resumes_anywhere() -> None:
    n, seed = 11, 3
    order = EpochSampler(n, seed, epoch=2).order().tolist()
    assert sorted(order) == list(range(n)) and order != list(range(n))  # a permutation, shuffled
    assert order == EpochSampler(n, seed, epoch=2, rank=1, world=4).order().tolist()  # the same on every rank
    assert order != EpochSampler(n, seed, epoch=3).order().tolist()  # a new order each epoch
    shares = [list(EpochSampler(n, seed, 2, rank=r, world=3)) for r in range(3)]
    assert all(epoch == 2 for share in shares for epoch, _ in share)
    # Each sample at most once, on one rank; every rank the same number (11 // 3), so none takes an extra step: the
    # last 11 % 3 of the order wait for the next epoch's shuffle.
    assert sorted(i for share in shares for _, i in share) == sorted(order[:9])
    assert [len(EpochSampler(n, seed, 2, rank=r, world=3)) for r in range(3)] == [len(s) for s in shares] == [3] * 3
    assert [i for _, i in EpochSampler(n, seed, 2)] == order  # one process: the whole epoch
    # Resuming after 5 samples of the global order, on another number of ranks, visits exactly the rest.
    rest = [i for r in range(2) for _, i in EpochSampler(n, seed, 2, start=5, rank=r, world=2)]
    assert sorted(rest) == sorted(order[5:])


def test_iter_documents_ends_a_document_at_a_blank_line_or_a_file_end(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("他来了。她走了！\n第二行\n\n  \nIt rained. Then it stopped.\n", encoding="utf-8")
    b.write_text("\n一句话\n", encoding="utf-8")
    assert list(iter_documents([a, b])) == [
        ["他来了。", "她走了！", "第二行"],
        ["It rained.", "Then it stopped."],
        ["一句话"],
    ]
