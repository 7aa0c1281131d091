"""Checkpoints and training state (bertkit.train.state): which checkpoint a resume takes, which ones are kept, and
that everything a resumed run needs comes back exactly. No shared data: toy models and folders."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bertkit.train import state
from bertkit.train.config import TrainConfig
from bertkit.train.optim import build_optimizer, build_scheduler


def checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    folder = run / f"checkpoint-{step:07d}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "training_state.pt").write_bytes(b"x")
    return folder


def test_incomplete_checkpoint_is_ignored(tmp_path: Path) -> None:
    good = tmp_path / "checkpoint-0000010"
    good.mkdir(parents=True)
    (good / "training_state.pt").write_bytes(b"x")
    partial = tmp_path / "checkpoint-0000020"  # as if killed before its training state was written
    partial.mkdir()
    (tmp_path / ".tmp-checkpoint-0000030").mkdir()
    (tmp_path / "latest").write_text("checkpoint-0000020\n")
    assert state.latest_checkpoint(tmp_path) == good


def test_latest_follows_the_pointer_else_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert state.latest_checkpoint(tmp_path / "absent") is None
    assert state.latest_checkpoint(tmp_path) is None
    first, second = checkpoint(tmp_path, 10), checkpoint(tmp_path, 20)
    assert state.latest_checkpoint(tmp_path) == second  # no pointer: the newest complete one
    (tmp_path / "latest").write_text("checkpoint-0000010\n")
    assert state.latest_checkpoint(tmp_path) == first  # the pointer wins over a newer folder


def test_pruning_keeps_the_newest_and_drops_later_steps(tmp_path: Path) -> None:
    """The checkpoint just written and the `keep - 1` before it stay; one of a later step (an abandoned run's) and
    older ones go."""
    for step in (1, 2, 3, 9):
        checkpoint(tmp_path, step)
    newest = tmp_path / "checkpoint-0000003"
    state.prune_checkpoints(tmp_path, newest, keep=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000003"]
    state.prune_checkpoints(tmp_path, newest, keep=1)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0000003"]


def test_remove_stale_removes_only_half_written_entries(tmp_path: Path) -> None:
    kept = [checkpoint(tmp_path, 4), tmp_path / "latest", tmp_path / "metrics.jsonl", tmp_path / "notes.txt"]
    for path in kept[1:]:
        path.write_text("x")
    (tmp_path / ".tmp-checkpoint-0000008").mkdir()
    (tmp_path / ".latest.abc123.tmp").write_text("x")
    (tmp_path / ".metrics.jsonl.abc123.tmp").write_text("x")
    state.remove_stale(tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_disk_full_message_says_what_is_intact(tmp_path: Path) -> None:
    first = str(state.disk_full_error(tmp_path, "checkpoint-0000005"))
    assert first == (f"disk full at {tmp_path}: checkpoint-0000005 was not written (no checkpoint was written yet); "
                     "free some space, then run again")  # fmt: skip
    checkpoint(tmp_path, 5)
    later = str(state.disk_full_error(tmp_path, "checkpoint-0000010"))
    assert "the last checkpoint checkpoint-0000005 is intact" in later and later.endswith("run again with --resume")


def test_random_generators_continue_where_they_were() -> None:
    saved = state.rng_state()
    before = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)  # as a new process would be
    state.set_rng_state(saved)
    after = (random.random(), np.random.rand(), torch.rand(3))
    assert before[:2] == after[:2] and torch.equal(before[2], after[2])


def toy_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def test_training_state_round_trip_continues_bit_exactly(tmp_path: Path) -> None:
    """Written and read back (weights_only), the state gives the position, and an optimizer and schedule that take
    the next step exactly as the ones that wrote it."""
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    optimizer = build_optimizer(model, 1e-2)
    scheduler = build_scheduler(optimizer, 0.5, 10)
    for _ in range(3):
        toy_step(model, optimizer, x)
        scheduler.step()
    position = state.TrainState(step=3, epoch=1, epoch_samples=16, recipe={"score": 0.5})
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    cfg = TrainConfig(out_dir=str(tmp_path))
    optimizer_state = state.gather_optimizer_state(model, optimizer)
    state.write_training_state(tmp_path, position, optimizer_state, scheduler, scaler, cfg)
    saved = state.read_training_state(tmp_path)
    assert saved["train_state"] == asdict(position) and saved["config"] == asdict(cfg)

    twin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    twin.load_state_dict(model.state_dict())
    twin_optimizer = build_optimizer(twin, 1e-2)
    twin_scheduler = build_scheduler(twin_optimizer, 0.5, 10)
    state.load_optimizer_state(twin, twin_optimizer, saved["optimizer"], fsdp=False, checkpoint=tmp_path)
    twin_scheduler.load_state_dict(saved["scheduler"])
    assert twin_scheduler.get_last_lr() == scheduler.get_last_lr()
    toy_step(model, optimizer, x)
    toy_step(twin, twin_optimizer, x)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_state_of_another_shape_is_refused_by_name(tmp_path: Path) -> None:
    """A checkpoint's Adam moments for a head of another shape (another label set) would be written past the
    parameter's end by the fused kernel: a crash or silently corrupted memory. Refused, naming the parameter."""
    import pytest

    from bertkit.errors import BertkitError

    torch.manual_seed(0)
    two, three = torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = build_optimizer(two, 1e-3, 0.01, 1e-6, torch.device("cpu"), fused=True)
    two(torch.randn(5, 4)).sum().backward()
    opt.step()
    saved = state.gather_optimizer_state(two, opt)
    opt3 = build_optimizer(three, 1e-3, 0.01, 1e-6, torch.device("cpu"), fused=True)
    with pytest.raises(BertkitError, match=r"optimizer state for 0\.weight has shape \(2, 4\).*\(3, 4\)"):
        state.load_optimizer_state(three, opt3, saved, fsdp=False, checkpoint=tmp_path)


def test_a_run_resumes_only_with_its_own_settings(tmp_path: Path) -> None:
    """check_same_run: each setting of the identity compared, the first that differs named with both values; a
    checkpoint of an older bertkit (no identity) is not compared."""
    import pytest

    from bertkit.errors import BertkitError

    saved = {"identity": {"--learning-rate": 1e-3, "--train": "/d/train.tsv", "labels": ["0", "1"]}}
    state.check_same_run(saved, dict(saved["identity"]), tmp_path)
    state.check_same_run({}, {"--learning-rate": 5.0}, tmp_path)
    for key, value, said in [
        ("--learning-rate", 2e-3, "--learning-rate 0.001, not 0.002"),
        ("--train", "/d/other.tsv", "--train '/d/train.tsv', not '/d/other.tsv'"),
        ("labels", ["0", "1", "2"], "labels ['0', '1'], not ['0', '1', '2']"),
    ]:
        with pytest.raises(BertkitError, match=f"started with {said}".replace("[", r"\[").replace("]", r"\]")):
            state.check_same_run(saved, {**saved["identity"], key: value}, tmp_path)
    with pytest.raises(BertkitError, match="--patience unset, not 3"):
        state.check_same_run(saved, {**saved["identity"], "--patience": 3}, tmp_path)


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_what_overwrite_set_aside_comes_back_unless_the_new_run_has_a_checkpoint(tmp_path: Path) -> None:
    """`--overwrite` moves the earlier run aside; settling it puts it back (the new run failed before a checkpoint)
    or deletes it (a checkpoint, or success). Each move finishes after a kill at any point of it."""
    from bertkit.files import RESTORING, SET_ASIDE, SET_ASIDE_DONE, own_entries, set_aside

    owns = ("checkpoint-*", "latest", "metrics.jsonl", "model")
    out = tmp_path / "run"
    checkpoint(out, 5)
    (out / "latest").write_text("checkpoint-0000005\n")
    (out / "model").mkdir()
    (out / "model/weights").write_text("earlier")
    (out / "metrics.jsonl").write_text("earlier")
    (out / "notes.txt").write_text("the user's")
    before = _files(out)

    def new_run(with_checkpoint: bool) -> None:
        (out / "metrics.jsonl").write_text("new")
        if with_checkpoint:
            checkpoint(out, 1)
            (out / "latest").write_text("checkpoint-0000001\n")

    set_aside(out, own_entries(out, owns))
    assert sorted(p.name for p in out.iterdir()) == [SET_ASIDE, "notes.txt"]
    new_run(with_checkpoint=False)
    assert state.end_replacement(out, owns, out, succeeded=False)
    assert _files(out) == before

    # Killed while setting aside (two entries moved, no completion mark): finished, then put back.
    (out / SET_ASIDE).mkdir()
    for name in ("model", "latest"):
        (out / name).rename(out / SET_ASIDE / name)
    assert state.end_replacement(out, owns, out, succeeded=False)
    assert _files(out) == before

    # Killed while putting back (the new run's entries gone, one earlier entry back): finished.
    set_aside(out, own_entries(out, owns))
    new_run(with_checkpoint=False)
    (out / "metrics.jsonl").unlink()
    (out / SET_ASIDE / RESTORING).touch()
    (out / SET_ASIDE / "model").rename(out / "model")
    assert state.end_replacement(out, owns, out, succeeded=False)
    assert _files(out) == before

    # A killed run's set-aside stays the earlier run: a second set_aside removes what the killed run wrote.
    set_aside(out, own_entries(out, owns))
    new_run(with_checkpoint=False)
    set_aside(out, own_entries(out, owns))
    assert (out / SET_ASIDE / SET_ASIDE_DONE).is_file() and sorted(p.name for p in out.iterdir()) == [
        SET_ASIDE,
        "notes.txt",
    ]
    assert state.end_replacement(out, owns, out, succeeded=False)
    assert _files(out) == before

    # With a checkpoint of its own the new run is kept, and the earlier one deleted.
    set_aside(out, own_entries(out, owns))
    new_run(with_checkpoint=True)
    assert state.end_replacement(out, owns, out, succeeded=False)
    assert not (out / SET_ASIDE).exists() and (out / "metrics.jsonl").read_text() == "new"
    assert state.latest_checkpoint(out) == out / "checkpoint-0000001" and not (out / "model").exists()
    assert not state.end_replacement(out, owns, out, succeeded=True)  # nothing set aside


def test_a_second_process_writing_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    # Two runs into one --out at once both exited 0, leaving one run's weights beside the other's metrics.
    import subprocess
    import sys

    import pytest

    from bertkit.errors import BertkitError
    from bertkit.files import output_lock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bertkit.files import output_lock\n"
         "with output_lock(sys.argv[1], 'pretrain'): print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        held = r"run is being written by another bertkit command that is still run"
        with pytest.raises(BertkitError, match=held), output_lock(out, "finetune"):
            pass
        with pytest.raises(BertkitError, match="is being written by another"), output_lock(tmp_path / "x/../run", ""):
            pass  # the same folder by another path
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out, "finetune"), output_lock(out, "finetune"):  # released when its holder ended, however
        pass  # it ended; asked again inside, it is held already
    assert not out.exists()  # nothing written into the user's folder
    relock = subprocess.run([sys.executable, "-c", "import sys; from bertkit.files import output_lock\n"
                             "with output_lock(sys.argv[1], 'x'): pass", str(out)])  # fmt: skip
    assert relock.returncode == 0  # released at the end of the block


def test_a_resume_on_data_that_changed_under_its_name_is_refused(tmp_path: Path) -> None:
    # --resume continued a run on a train.tsv replaced by other sentences (or data prepared again from another
    # corpus), exit 0: only the path was compared.
    import json

    import pytest

    from bertkit.errors import BertkitError

    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\n好\t1\n", encoding="utf-8")
    saved = {"identity": {"--train": str(data), state.CONTENTS + "--train": state.contents_digest(data)}}
    state.check_same_run(saved, {**saved["identity"]}, tmp_path)
    data.write_text("text\tlabel\n差\t0\n", encoding="utf-8")
    now = {"--train": str(data), state.CONTENTS + "--train": state.contents_digest(data)}
    with pytest.raises(BertkitError, match=r"started with the contents of --train '[0-9a-f]{16}', not '[0-9a-f]{16}'"):
        state.check_same_run(saved, now, tmp_path)
    state.check_same_run({"identity": {"--train": str(data)}}, now, tmp_path)  # an older checkpoint: not recorded
    # A prepared directory: its manifest, less the seconds that two runs of one prepare differ by.
    prepared = tmp_path / "data"
    prepared.mkdir()
    manifest = {"format": "x", "seconds": 1.5, "splits": {"train": {"instances": 10}}}
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    first = state.contents_digest(prepared)
    (prepared / "manifest.json").write_text(json.dumps({**manifest, "seconds": 2.0}))
    assert state.contents_digest(prepared) == first
    (prepared / "manifest.json").write_text(json.dumps({**manifest, "splits": {"train": {"instances": 11}}}))
    assert state.contents_digest(prepared) != first
