"""Hub names as --model (bertkit.hub): read from a Hugging Face cache folder that the test builds in the Hub's
layout from the MiniLM files, offline (tests never reach the network)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_bertkit

from bertkit.hub import is_hub_id

REPO = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, minilm_dir: Path) -> Path:
    """HF_HOME with MiniLM cached as the Hub's snapshot_download leaves a model: refs/main naming a snapshot."""
    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(minilm_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(COMMIT)
    return home


def test_what_reads_as_a_hub_name() -> None:
    assert all(map(is_hub_id, ["bert-base-chinese", "google-bert/bert-base-uncased", "org/name.v2", REPO]))
    assert not any(map(is_hub_id, ["runs/x/model", "./model", "/abs/model", "~/m", "a/b/c", "cfg.json", "v.txt"]))


def test_a_cached_hub_model_embeds_as_its_local_directory(hub_cache: Path, minilm_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    texts = "A Hub name.\n今天天气很好。\n"
    by_name = run_bertkit("embed", "--model", REPO, "--input", "-", "--out", tmp_path / "a.npy", stdin=texts, env=env)
    assert by_name.status == 0, by_name.err[-2000:]
    local = run_bertkit("embed", "--model", minilm_dir, "--input", "-", "--out", tmp_path / "b.npy", stdin=texts)
    assert local.status == 0, local.err[-2000:]
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))  # same files, same process kind

    missing = run_bertkit("embed", "--model", "org/not-cached", "--input", "-", "--out", tmp_path / "c.npy",
                          stdin=texts, env=env)  # fmt: skip
    assert missing.status == 2 and "'org/not-cached' is not in the cache" in missing.err, missing.err
    assert len(missing.err.strip().splitlines()[-1]) > 0 and "Traceback" not in missing.err
    assert not (tmp_path / "c.npy").exists()
