"""Small pieces of the data layer that need no shared data: the epoch sampler and the document reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def test_a_file_of_cr_line_ends_is_read_line_by_line(tmp_path: Path) -> None:
    # An old Mac file (CR alone ends each line) was one line: a corpus of one document, all NSP pairs IsNext.
    from bertkit.files import read_lines

    cr = tmp_path / "cr.txt"
    cr.write_bytes("第一句。\r第二句。\r\r另一篇。\r".encode())
    assert list(read_lines(cr)) == ["第一句。", "第二句。", "", "另一篇。"]
    assert list(iter_documents([cr])) == [["第一句。", "第二句。"], ["另一篇。"]]
    lf = tmp_path / "lf.txt"  # in a file of LF line ends, a stray CR stays inside its line
    lf.write_bytes(b"one\rtwo\nthree\r\n")
    assert list(read_lines(lf)) == ["one\rtwo", "three"]


def test_bytes_read_counts_every_byte_of_the_files(tmp_path: Path) -> None:
    # prepare's progress bar stands at this count against the files' sizes: it must end at their sum.
    from bertkit.files import BytesRead

    files = {"cr.txt": "一。\r二。\r\r三".encode(), "bom.txt": "\ufeff第一行\r\n\n第二行".encode(), "empty.txt": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    read = BytesRead()
    assert len(list(iter_documents([tmp_path / name for name in files], read))) == 4
    assert read.n == sum(map(len, files.values()))


def test_a_file_that_is_not_utf8_text_is_named_with_what_to_do(tmp_path: Path) -> None:
    import gzip

    import pytest

    from bertkit import BertkitError
    from bertkit.files import read_lines

    cases = {
        "gz": (gzip.compress("中文\n".encode()), "gzip-compressed: decompress it first"),
        "utf16": ("中文\n".encode("utf-16"), "UTF-16 (its first bytes say so)"),
        "nul": (b"\x00\x01\x02\xff\x00\n", "NUL bytes: it is not a text file"),
        "gbk": ("你好，世界\n".encode("gbk"), "iconv -f GB18030 -t UTF-8"),
        "latin1": ("ok\ncaf\xe9 \xff\xfe\xfd\n".encode("latin-1"), "iconv -f ITS_ENCODING -t UTF-8"),
    }
    for name, (data, advice) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BertkitError, match="not valid UTF-8") as e:
            list(read_lines(tmp_path / name))
        assert advice in str(e.value) and str(tmp_path / name) in str(e.value), (name, str(e.value))


def test_truncation_trims_each_end_about_as_often() -> None:
    # The original pops a token from the front or the back of the longer segment by a fair coin: a model sees
    # sentences cut at either end, not always at their ends.
    from bertkit.data.instances import _truncate_spans

    rng = np.random.default_rng(0)
    fronts_a, fronts_b = [], []
    for _ in range(2000):
        a0, a1, b0, b1 = _truncate_spans((0, 100), (200, 290), 100, rng)  # the longer first: 50 cut from A, 40 from B
        assert (a1 - a0, b1 - b0) == (50, 50) and a0 >= 0 and a1 <= 100 and b0 >= 200 and b1 <= 290
        fronts_a.append(a0)
        fronts_b.append(b0 - 200)
    # Binomial(50, 1/2) and (40, 1/2) means over 2000 draws: standard errors about 0.08 and 0.07.
    assert abs(np.mean(fronts_a) - 25) < 0.5 and abs(np.mean(fronts_b) - 20) < 0.5
