"""The training loop's small parts (bertkit.train): batches per epoch, schedule, precision, the log window. No
shared data."""

from __future__ import annotations

import pytest
import torch

from bertkit.train.batches import epoch_loader
from bertkit.train.distributed import any_rank, dist_info
from bertkit.train.loop import _LogWindow
from bertkit.train.optim import build_optimizer, build_scheduler, linear_schedule, param_groups
from bertkit.train.precision import amp_dtype


class Items(torch.utils.data.Dataset):
    """Ten numbered items; the key is `(epoch, i)`, as `EpochSampler` gives it."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[1]


def test_an_epoch_split_across_ranks_and_resumed_part_way() -> None:
    loader = epoch_loader(Items(), lambda items: torch.tensor(items), batch_size=3, seed=7)
    whole = torch.cat(list(loader(0, 0, 0, 1))).tolist()
    assert sorted(whole) == list(range(10)) and whole != list(range(10))  # shuffled, each item once
    assert torch.cat(list(loader(1, 0, 0, 1))).tolist() != whole  # another order next epoch
    assert torch.cat(list(loader(0, 4, 0, 1))).tolist() == whole[4:]  # resumed after 4 samples: the rest
    ranks = [torch.cat(list(loader(0, 4, rank, 2))).tolist() for rank in (0, 1)]
    assert ranks == [whole[4::2], whole[5::2]]  # two ranks share the rest, neither repeats the other


def test_loading_batches_leaves_the_global_generator_alone() -> None:
    """A resumed run creates one more loader than an uninterrupted one: drawing from the global generator (which
    dropout uses) would make it train differently."""
    loader = epoch_loader(Items(), lambda items: torch.tensor(items), batch_size=4, seed=0)
    before = torch.get_rng_state()
    list(loader(0, 0, 0, 1))
    assert torch.equal(torch.get_rng_state(), before)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = linear_schedule(warmup=2, total=6)
    assert [f(s) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    model = torch.nn.Linear(2, 2)
    scheduler = build_scheduler(build_optimizer(model, 1.0), warmup_ratio=0.01, total_steps=10)
    assert scheduler.get_last_lr() == [1.0, 1.0]  # a warm-up shorter than a step is one step


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 5))
    model[2].weight = model[0].weight  # tied, as the MLM decoder is to the embeddings: one parameter
    decay, no_decay = param_groups(model, 0.01)
    assert [p.shape for p in decay["params"]] == [(5, 3)] and decay["weight_decay"] == 0.01
    assert sorted(p.numel() for p in no_decay["params"]) == [3, 3, 5] and no_decay["weight_decay"] == 0.0


def test_no_autocast_on_cpu() -> None:
    for precision in ("auto", "fp32", "bf16", "fp16"):
        assert amp_dtype(precision, torch.device("cpu")) is None


def test_one_process_is_rank_zero_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dist_info() == (0, 1, 0)
    assert any_rank(True, 1, torch.device("cpu")) and not any_rank(False, 1, torch.device("cpu"))


def test_log_window_averages_over_steps() -> None:
    window = _LogWindow()
    for loss, mlm in ((1.0, 0.5), (3.0, 1.5), (2.0, 1.0), (2.0, 1.0)):  # two steps of two micro-batches
        window.add(loss, {"mlm_loss": mlm}, tokens=10, grad_accum=2)
    window.steps = 2
    record = window.record(lr=0.1, grad_norm=0.5)
    assert list(record) == ["loss", "mlm_loss", "lr", "grad_norm", "tokens_per_s"]
    assert record["loss"] == 2.0 and record["mlm_loss"] == 1.0 and record["tokens_per_s"] > 0
