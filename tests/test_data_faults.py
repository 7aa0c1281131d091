"""Faults in the pre-training data layer: `bertkit prepare` never deletes what it did not write and leaves no
temporary files behind, and a damaged or hand-edited data directory is one clear line when it is opened.

The prepare tests go through the command (the `bertkit` fixture), where the point is what the user sees (exit
status 2 and one line); a few settings the CLI does not expose (block and shard sizes) go through the library.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import bertkit_command

from bertkit import BertkitError, Tokenizer
from bertkit.data import prepare as prepare_module
from bertkit.data.config import PrepareConfig
from bertkit.data.prepare import prepare
from bertkit.data.pretraining import PretrainingData, read_manifest
from bertkit.files import read_lines

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures and helpers
@pytest.fixture(scope="module")
def corpus_text(data_dir: Path) -> str:
    """The first 40 documents of the Lu Xun corpus (about 200 KB)."""
    lines = (data_dir / "pretrain_zh/luxun.txt").read_text(encoding="utf-8").split("\n")
    return "\n".join(lines[:2383]) + "\n"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, corpus_text: str) -> Path:
    root = tmp_path_factory.mktemp("tok")
    (root / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    out = root / "tok"
    Tokenizer.train([root / "corpus.txt"], vocab_size=2000, show_progress=False).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_text: str, tok_dir: Path) -> Path:
    """A small prepared directory with both splits; tests that damage it work on a copy."""
    root = tmp_path_factory.mktemp("prepared")
    (root / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    prepare([root / "corpus.txt"], tok_dir, root / "data", PrepareConfig(eval_fraction=0.1, seed=3), progress=False)
    return root / "data"


def write_corpus(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def one_line(err: str) -> str:
    """The error line of a failed command: the only line of standard error besides the progress bar."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("prepare:")]
    assert len(lines) == 1 and lines[0].startswith("bertkit ") and "Traceback" not in err, err
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under `directory` with its bytes (None for a folder): equal snapshots = untouched."""
    return {
        str(p.relative_to(directory)): (None if p.is_dir() else p.read_bytes()) for p in sorted(directory.rglob("*"))
    }


def leftovers(directory: Path) -> list[str]:
    """Temporary entries of prepare in `directory` and beside it (the older `OUT.partial` included)."""
    inside = [p.name for p in directory.glob(".*partial*")] if directory.is_dir() else []
    beside = [p.name for p in directory.parent.glob(f"{directory.name}.partial*")]
    return inside + beside


# ------------------------------------------------------------------ never delete what prepare did not write
def test_out_holding_the_corpus_and_other_files_is_refused_and_untouched(tmp_path, bertkit, corpus_text, tok_dir):
    folder = tmp_path / "work"
    corpus = write_corpus(folder / "corpus.txt", corpus_text)
    (folder / "notes.md").write_text("my notes\n")
    before = snapshot(folder)
    for extra in ([], ["--overwrite"]):
        status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", folder, *extra)
        assert status == 2 and "contains the input" in one_line(err)
        assert snapshot(folder) == before
    tokenizer_before = snapshot(tok_dir)
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", tok_dir, "--overwrite")
    assert status == 2 and "is the input" in one_line(err) and snapshot(tok_dir) == tokenizer_before
    # Not an input, but not prepare's either: refused without --overwrite, and untouched.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("keep me\n")
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", other)
    assert status == 2 and "not empty" in one_line(err) and "--overwrite" in err
    assert snapshot(other) == {"notes.md": b"keep me\n"}


def test_out_dotdot_from_a_child_folder_is_refused(tmp_path, bertkit, monkeypatch, corpus_text, tok_dir):
    parent = tmp_path / "parent"
    write_corpus(parent / "child" / "corpus.txt", corpus_text)
    (parent / "other.txt").write_text("unrelated\n")
    before = snapshot(parent)
    monkeypatch.chdir(parent / "child")
    status, _, err = bertkit("prepare", "--corpus", "corpus.txt", "--tokenizer", tok_dir, "--out", "..", "--overwrite")
    assert status == 2 and "contains the input" in one_line(err)
    assert snapshot(parent) == before


def test_overwrite_keeps_foreign_files_and_replaces_only_prepares_own(
    tmp_path, monkeypatch, bertkit, corpus_text, tok_dir
):
    corpus = write_corpus(tmp_path / "in" / "corpus.txt", corpus_text)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.md").write_text("keep me\n")
    (out / "sub" / "train-00000.tokens.bin").write_bytes(b"not prepare's: in a subfolder")
    argv = ["prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", out, "--overwrite"]
    status, _, err = bertkit(*argv)
    assert status == 0, err
    assert (out / "notes.md").read_text() == "keep me\n"
    assert (out / "sub" / "train-00000.tokens.bin").read_bytes() == b"not prepare's: in a subfolder"
    assert len(PretrainingData(out)) > 0 and not leftovers(out)
    # prepare's own earlier output, with more shards than the new one: every old shard goes, the new ones come in.
    many_shards = PrepareConfig(block_chars=20_000, shard_tokens=20_000, seed=1)
    monkeypatch.setattr(prepare_module, "MIN_BLOCK_DOCUMENTS", 2)  # so that 40 documents make several blocks
    prepare([corpus], tok_dir, out, many_shards, overwrite=True, progress=False)
    assert len(list(out.glob("train-*.tokens.bin"))) > 2
    status, _, err = bertkit(*argv, "--eval-fraction", "0.1")
    assert status == 0, err
    m = read_manifest(out)
    assert m["config"]["seed"] != many_shards.seed
    assert sorted(p.name for p in out.glob("*.bin")) == [
        f"{split}-00000.{kind}.bin" for split in ("eval", "train") for kind in ("index", "tokens")
    ]
    assert (out / "notes.md").read_text() == "keep me\n" and not leftovers(out)
    # A file of the user's inside prepare's own tokenizer/ folder: refused, not removed with the folder.
    (out / "tokenizer" / "NOTES.md").write_text("mine\n")
    status, _, err = bertkit(*argv)
    assert status == 2 and "holds 'tokenizer/NOTES.md', which bertkit prepare did not write" in err, err
    assert (out / "tokenizer" / "NOTES.md").read_text() == "mine\n"
    assert len(PretrainingData(out, "all")) == sum(m["splits"][s]["instances"] for s in ("train", "eval"))


def test_a_failing_run_leaves_no_temporary_folder_and_the_earlier_output_intact(
    tmp_path, bertkit, corpus_text, tok_dir
):
    good = write_corpus(tmp_path / "in" / "good.txt", corpus_text)
    bad = tmp_path / "in" / "bad.txt"
    bad.write_bytes(corpus_text.encode() + b"\n\n\xff\xfe not UTF-8\n")
    out = tmp_path / "out"
    status, _, err = bertkit("prepare", "--corpus", good, "--tokenizer", tok_dir, "--out", out)
    assert status == 0, err
    before, beside = snapshot(out), sorted(p.name for p in tmp_path.iterdir())
    # The bad byte comes after a whole file of good text: shards were being written when it failed.
    argv = ["prepare", "--corpus", good, bad, "--tokenizer", tok_dir, "--out", out, "--overwrite"]
    status, _, err = bertkit(*argv)
    assert status == 2 and "bad.txt: not valid UTF-8" in one_line(err)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == beside
    # A first run that fails leaves no output folder at all.
    status, _, err = bertkit("prepare", "--corpus", bad, "--tokenizer", tok_dir, "--out", tmp_path / "new")
    assert status == 2 and not (tmp_path / "new").exists() and not leftovers(tmp_path / "new")


def test_an_interrupted_run_cleans_up(tmp_path, monkeypatch, corpus_text, tok_dir):
    corpus = write_corpus(tmp_path / "in" / "corpus.txt", corpus_text)
    out = tmp_path / "out"
    prepare([corpus], tok_dir, out, progress=False)
    before = snapshot(out)
    real, calls = prepare_module._process_block, []

    def interrupted_on_the_third_block(job):
        calls.append(job[:2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(prepare_module, "_process_block", interrupted_on_the_third_block)
    monkeypatch.setattr(prepare_module, "MIN_BLOCK_DOCUMENTS", 2)  # so that 40 documents make several blocks
    with pytest.raises(KeyboardInterrupt):
        prepare([corpus], tok_dir, out, PrepareConfig(block_chars=20_000), overwrite=True, progress=False)
    assert len(calls) == 3 and snapshot(out) == before and not leftovers(out)


def test_a_killed_run_leaves_a_temporary_folder_that_the_next_run_removes(tmp_path, bertkit, data_dir, tok_dir):
    out = tmp_path / "out"
    corpus = sorted((data_dir / "pretrain_zh").glob("*.txt"))  # about 10 s of work: killed as soon as it starts
    argv = ["prepare", "--corpus", *corpus, "--tokenizer", tok_dir, "--out", out]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(bertkit_command(*argv), stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".*partial/*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert leftovers(out) and not (out / "manifest.json").exists()
    # The directory holds only prepare's own temporary folder: no --overwrite needed, and it is gone afterwards.
    small = write_corpus(tmp_path / "in" / "small.txt", "一句话。又一句。\n第三句。\n\n另一篇。第二句。\n")
    status, _, err = bertkit("prepare", "--corpus", small, "--tokenizer", tok_dir, "--out", out)
    assert status == 0, err
    assert not leftovers(out) and (out / "manifest.json").is_file()


# ------------------------------------------------------------------ a full disk
def _enospc_after(limit: int):
    """An `open` for prepare's module whose binary files fail with ENOSPC once `limit` bytes were written."""
    written = [0]

    class FullDisk:
        def __init__(self, f):
            self._f, self.name = f, f.name

        def write(self, data) -> int:
            written[0] += len(data)
            if written[0] > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def close(self) -> None:
            self._f.close()

    def fake_open(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller)
        return FullDisk(f) if "b" in mode and "w" in mode else f

    return fake_open


def test_disk_full_while_writing_shards_is_one_line_and_changes_nothing(
    tmp_path, bertkit, monkeypatch, corpus_text, tok_dir
):
    corpus = write_corpus(tmp_path / "in" / "corpus.txt", corpus_text)
    out = tmp_path / "out"
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", out, "--seed", "1")
    assert status == 0, err
    before = snapshot(out)
    monkeypatch.setattr(prepare_module, "open", _enospc_after(50_000), raising=False)
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", out, "--overwrite")
    line = one_line(err)
    assert status == 2 and f"disk full at {out}{os.sep}train-00000." in line, line
    assert snapshot(out) == before and not leftovers(out)


def test_disk_full_on_a_small_tmpfs(tmp_path, bertkit, data_dir, corpus_text, tok_dir, small_disk):
    mount = small_disk("1m")
    small = write_corpus(tmp_path / "in" / "small.txt", corpus_text[:60_000])
    out = mount / "data"
    status, _, err = bertkit("prepare", "--corpus", small, "--tokenizer", tok_dir, "--out", out)
    assert status == 0, err
    before = snapshot(mount)
    big = data_dir / "pretrain_zh/luxun.txt"  # about 1.5 MB of token ids: more than the disk has left
    status, _, err = bertkit("prepare", "--corpus", big, "--tokenizer", tok_dir, "--out", out, "--overwrite")
    assert status == 2 and f"disk full at {out}{os.sep}" in one_line(err)
    assert snapshot(mount) == before


# ------------------------------------------------------------------ settings and paths
@pytest.mark.parametrize("fraction", ["1.5", "-0.1", "nan"])
def test_eval_fraction_outside_0_to_1_is_refused(tmp_path, bertkit, fraction, corpus_text, tok_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", corpus_text[:2000])
    with pytest.raises(BertkitError, match=r"eval_fraction must be from 0 to 1"):  # the settings, in Python
        prepare([corpus], tok_dir, tmp_path / "out", PrepareConfig(eval_fraction=float(fraction)), progress=False)
    # The command line refuses it while parsing its arguments (exit status 2, the flag named).
    argv = ["prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", tmp_path / "out"]
    status, _, err = bertkit(*argv, f"--eval-fraction={fraction}")
    assert status == 2 and "--eval-fraction" in err
    assert not (tmp_path / "out").exists()


def test_whole_word_masking_without_jieba_is_one_line(tmp_path, bertkit, corpus_text, tok_dir, monkeypatch):
    # It was a traceback from inside a worker, after the output folder was made.
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jieba" else find_spec(name, *a))
    corpus = write_corpus(tmp_path / "corpus.txt", corpus_text[:2000])
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", tmp_path / "out",
                             "--whole-word-mask")  # fmt: skip
    assert status == 2 and one_line(err).endswith("with jieba: pip install 'bertkit[zh]'"), err
    assert not (tmp_path / "out").exists()


def test_a_corpus_directory_is_named_as_such(tmp_path, bertkit, corpus_text, tok_dir):
    write_corpus(tmp_path / "texts" / "a.txt", corpus_text[:2000])
    argv = ["prepare", "--corpus", f"{tmp_path / 'texts'}/", "--tokenizer", tok_dir, "--out", tmp_path / "out"]
    status, _, err = bertkit(*argv)
    line = one_line(err)
    assert status == 2 and f"corpus {tmp_path / 'texts'} is a directory: give its files, e.g. " in line, line
    assert not (tmp_path / "out").exists()
    with pytest.raises(BertkitError, match="is a directory: give its files"):  # every reader of text files
        list(read_lines(tmp_path / "texts"))


# ------------------------------------------------------------------ splits
def test_eval_fraction_1_makes_an_evaluation_only_directory(tmp_path, bertkit, corpus_text, tok_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", corpus_text)
    out = tmp_path / "heldout"
    argv = ["prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", out, "--eval-fraction", "1"]
    status, _, err = bertkit(*argv)
    assert status == 0, err
    m = read_manifest(out)
    assert m["documents"] == {"train": 0, "eval": 40} and m["splits"]["train"]["shards"] == []
    assert len(PretrainingData(out, "train")) == 0
    assert len(PretrainingData(out, "all")) == len(PretrainingData(out, "eval")) == m["splits"]["eval"]["instances"]
    status, _, err = bertkit("pretrain", "--data", out, "--out", tmp_path / "run", "--max-steps", "1")
    assert status == 2 and "no training" in one_line(err)


@pytest.mark.parametrize("fraction", [0.3, 0.75])
def test_the_held_out_share_is_the_one_asked_for(tmp_path, fraction, corpus_text, tok_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", corpus_text)
    m = prepare([corpus], tok_dir, tmp_path / "out", PrepareConfig(eval_fraction=fraction), progress=False)
    assert abs(m["documents"]["eval"] - 40 * fraction) <= 1, m["documents"]


def test_split_all_is_train_then_eval(prepared: Path):
    train, held_out, both = (PretrainingData(prepared, s) for s in ("train", "eval", "all"))
    assert len(train) > 0 and len(held_out) > 0 and len(both) == len(train) + len(held_out)
    # Each instance is masked as in its own split, so `all` is exactly the two splits one after the other.
    for i in (0, len(train) - 1):
        assert all(np.array_equal(both[(0, i)][k], train[(0, i)][k]) for k in both[(0, i)])
    for j in (0, len(held_out) - 1):
        got, want = both[(0, len(train) + j)], held_out[(0, j)]
        assert all(np.array_equal(got[k], want[k]) for k in got)
    with pytest.raises(BertkitError, match="split 'dev'"):
        PretrainingData(prepared, "dev")


# ------------------------------------------------------------------ damaged directories
def _edit_manifest(change):
    def edit(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))

    return edit


def _truncate(name: str, keep) -> object:
    def cut(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: keep(len(data))])

    return cut


DAMAGES = {
    # name: (damage, words the message must hold)
    "index cut to whole rows": (
        _truncate("train-00000.index.bin", lambda n: n // 64 * 32),
        ["train-00000.index.bin", "bytes, the manifest expects"],
    ),
    "tokens cut short": (
        _truncate("train-00000.tokens.bin", lambda n: n - 1000),
        ["train-00000.tokens.bin", "bytes, the manifest expects"],
    ),
    "shard renamed": (
        lambda d: (d / "eval-00000.tokens.bin").rename(d / "eval-00001.tokens.bin"),
        ["eval-00000.tokens.bin", "is missing"],
    ),
    "shard deleted": (lambda d: (d / "train-00000.index.bin").unlink(), ["train-00000.index.bin", "is missing"]),
    "dtype changed": (
        _edit_manifest(lambda m: m.update(token_dtype="uint32")),
        ["train-00000.tokens.bin", "uint32"],
    ),
    "dtype unknown": (_edit_manifest(lambda m: m.update(token_dtype="int7")), ["manifest.json", "token_dtype"]),
    "invalid JSON": (lambda d: (d / "manifest.json").write_text('{"format": '), ["manifest.json", "not valid JSON"]),
    "not an object": (
        lambda d: (d / "manifest.json").write_text("[]"),
        ["manifest.json", "expected a JSON object, found list"],
    ),
    "key missing": (
        _edit_manifest(lambda m: m["splits"]["train"].pop("shards")),
        ["manifest.json", "splits.train.shards"],
    ),
    "wrong type": (
        _edit_manifest(lambda m: m["config"].update(max_seq_length="128")),
        ["manifest.json", "config.max_seq_length"],
    ),
    "counts disagree": (
        _edit_manifest(lambda m: m["splits"]["train"].update(instances=m["splits"]["train"]["instances"] + 5)),
        ["manifest.json", "splits.train"],
    ),
    "tokenizer replaced": (
        lambda d: (d / "tokenizer/vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"),
        ["tokenizer", "5 tokens"],
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_directory_is_one_clear_line_when_opened(tmp_path, prepared: Path, damage: str):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    change, words = DAMAGES[damage]
    change(data)
    with pytest.raises(BertkitError) as e:
        PretrainingData(data, "eval")  # every shard is checked, not only the split that is read
    message = str(e.value)
    assert "\n" not in message and "run bertkit prepare again" in message, message
    assert all(w in message for w in words), message


def test_a_damaged_directory_through_the_cli(tmp_path, bertkit, prepared: Path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    _truncate("train-00000.index.bin", lambda n: n // 64 * 32)(data)
    status, _, err = bertkit("pretrain", "--data", data, "--out", tmp_path / "run", "--max-steps", "1")
    line = one_line(err)
    assert status == 2 and "train-00000.index.bin" in line and "run bertkit prepare again" in line


def test_an_index_row_that_points_outside_its_shard_is_named_when_read(tmp_path, prepared: Path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    index = np.fromfile(data / "train-00000.index.bin", dtype=np.int64).reshape(-1, 4)
    index[7, 0] = 10**9  # a flipped high bit in an offset: the file keeps its size, so opening cannot see it
    index.tofile(data / "train-00000.index.bin")
    train = PretrainingData(data)
    assert len(train[(0, 6)]["input_ids"]) > 3
    with pytest.raises(BertkitError, match=r"train-00000\.index\.bin: row 7 points outside .* prepare again"):
        train[(0, 7)]


def test_a_manifest_of_another_program_is_not_prepares(tmp_path, bertkit, corpus_text, tok_dir):
    # Any program may write a manifest.json (web apps do): it was taken for prepare's output, so --overwrite
    # replaced it.
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    before = snapshot(site)
    corpus = write_corpus(tmp_path / "in" / "c.txt", corpus_text[:20_000])
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", site)
    assert status == 2 and "was not written by bertkit prepare" in one_line(err)
    status, _, err = bertkit("prepare", "--corpus", corpus, "--tokenizer", tok_dir, "--out", site, "--overwrite")
    assert status == 2 and "'manifest.json', which bertkit prepare did not write there" in one_line(err)
    assert snapshot(site) == before
