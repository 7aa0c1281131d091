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
    assert missing.status == 2 and "model 'org/not-cached' in the cache" in missing.err, missing.err
    assert len(missing.err.strip().splitlines()[-1]) > 0 and "Traceback" not in missing.err
    assert not (tmp_path / "c.npy").exists()


@pytest.mark.parametrize(
    ("remote", "fetched"),
    [
        # Shards need their index: it was not asked for, so a sharded model came without it and could not be read.
        (
            ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "vocab.txt", "flax_model.msgpack"],
            ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "vocab.txt"],
        ),
        # A model with .bin weights alone came without weights; with both, the .bin copy is not fetched.
        (["config.json", "pytorch_model.bin", "vocab.txt"], ["config.json", "pytorch_model.bin", "vocab.txt"]),
        (
            ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "vocab.txt"],
            ["config.json", "model.safetensors", "vocab.txt"],
        ),
    ],
)  # fmt: skip
def test_a_download_fetches_the_weights_in_the_layout_the_model_has(
    remote: list[str], fetched: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from bertkit.hub import model_path

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:  # the Hub's filter, no network
        for name in filter_repo_objects(remote, allow_patterns=allow_patterns):
            (snapshot / name).write_text(name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert model_path("org/model") == snapshot
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(fetched)
