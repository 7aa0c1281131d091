"""The training loop and its small parts (bertkit.train): batches per epoch, schedule, precision, the log window,
and a trainer built from a dataset that resumes bit-exactly. No shared data: a toy model on random numbers."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bertkit.errors import BertkitError
from bertkit.train.batches import epoch_loader
from bertkit.train.config import TrainConfig
from bertkit.train.distributed import any_rank, dist_info
from bertkit.train.loop import Trainer, _LogWindow
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


def test_cpu_autocasts_only_when_bf16_is_asked_for() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("fp32", cpu) is None  # the same numbers on every CPU
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(BertkitError, match="fp16 is for CUDA"):
        amp_dtype("fp16", cpu)


def test_one_process_is_rank_zero_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dist_info() == (0, 1, 0)
    assert any_rank(True, 1, torch.device("cpu")) and not any_rank(False, 1, torch.device("cpu"))


def test_log_window_averages_over_steps() -> None:
    window = _LogWindow()
    for loss, mlm in ((1.0, 0.5), (3.0, 1.5), (2.0, 1.0), (2.0, 1.0)):  # two steps of two micro-batches
        window.add(loss, {"mlm_loss": mlm}, tokens=10, micro_batches=2)
    window.steps = 2
    record = window.record(lr=0.1, grad_norm=0.5)
    assert list(record) == ["loss", "mlm_loss", "lr", "grad_norm", "tokens_per_s"]
    assert record["loss"] == 2.0 and record["mlm_loss"] == 1.0 and record["tokens_per_s"] > 0


# ---------------------------------------------------------------------------------------------- the whole loop
class Toy(torch.nn.Module):
    """A regression with dropout (so that a resume must restore the random generator) that saves itself as a
    model directory."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(4, 1)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.dropout(x))

    def save_pretrained(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(Path(path) / "model.safetensors"))


class Points(torch.utils.data.Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(18, 4, generator=generator)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"x": self.x[key[1]], "y": self.y[key[1]], "attention_mask": torch.ones(1)}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def toy_trainer(run: Path, interrupt_after: int | None = None) -> Trainer:
    """18 samples in batches of 4, two per step: 3 steps per epoch, the last of one batch (of 2 samples)."""
    torch.manual_seed(0)
    calls = []

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        calls.append(1)
        if interrupt_after is not None and len(calls) > interrupt_after:
            raise KeyboardInterrupt  # as if killed after that many micro-batches
        loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss, {"half": loss.item() / 2}

    cfg = TrainConfig(out_dir=str(run), max_steps=8, batch_size=4, grad_accum=2, learning_rate=0.05, save_every=2,
                      eval_every=4, log_every=1, progress=False, device="cpu")  # fmt: skip
    return Trainer.from_dataset(Toy(), cfg, Points(), collate, loss_fn,
                                eval_fn=lambda m: {"accuracy": float(m.dense.bias)})  # fmt: skip


def test_a_short_last_step_takes_the_mean_gradient_of_the_micro_batches_it_has(tmp_path: Path) -> None:
    """An epoch that ends part-way through a step's micro-batches: that step's gradient is the mean over the ones
    it got (here one batch of 2 samples, grad_accum 2), not that sum divided by grad_accum."""
    trainer = toy_trainer(tmp_path / "run")
    trainer.model.eval()  # no dropout: the two gradients are of the same function
    data = Points()
    batch = collate([data[(0, i)] for i in (16, 17)])
    done, bad = trainer._accumulate(iter([batch]), _LogWindow())
    assert (done, bad) == (1, None)
    got = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.model.zero_grad()
    torch.nn.functional.mse_loss(trainer.model(batch["x"]), batch["y"]).backward()
    for g, want in zip(got, (p.grad for p in trainer.model.parameters()), strict=True):
        assert torch.allclose(g, want, rtol=1e-6, atol=0)  # the same gradient, scaled by 2 and back: rounding


def test_a_run_on_the_cpu_says_what_threads_and_processes_it_was_given(tmp_path: Path, capsys) -> None:
    toy_trainer(tmp_path / "run").train()
    threads = torch.get_num_threads()
    out = capsys.readouterr().out
    assert f"CPU: the model runs on {threads} threads" in out and "batches are made between steps" in out
    trainer = toy_trainer(tmp_path / "other")
    trainer.loading_processes = 2
    assert trainer._cpu_line().endswith("batches are made in 2 other process(es), one thread each")


def test_a_time_budget_says_the_schedule_it_left_undone(tmp_path: Path, capsys) -> None:
    # --max-minutes stopped a run planned for many steps with its learning rate near the peak, and said only the
    # step: the schedule decays over --max-steps, so the user learns what a shorter --max-steps would change.
    trainer = toy_trainer(tmp_path / "run")
    trainer.cfg.max_minutes = 1e-9
    trainer.train()
    out = capsys.readouterr().out
    assert trainer.state.step == 1
    lr = trainer.scheduler.get_last_lr()[0] / 0.05
    assert (
        f"time budget of 1e-09 minutes used: stopping at step 1 of 8, the learning rate still at {lr:.0%} of its "
        "peak (it decays to 0 over the 8 steps planned" in out
    )
    assert 0.5 < lr <= 1


def test_ctrl_c_while_a_checkpoint_is_written_waits_for_it(tmp_path: Path) -> None:
    # A KeyboardInterrupt raised inside torch.save's zip writer became "RuntimeError: unexpected pos", with a
    # traceback and exit 1, and the checkpoint being written was lost.
    import argparse
    import os
    import signal

    from bertkit.cli import _what_an_interrupt_kept
    from bertkit.files import interrupts_deferred
    from bertkit.train.state import latest_checkpoint

    done = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("after the signal")
    assert done == ["after the signal"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():  # one block inside another: held to the outer end
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        done.append("after the inner block")
    assert done[-1] == "after the inner block" and signal.getsignal(signal.SIGINT) is signal.default_int_handler

    trainer = toy_trainer(tmp_path / "run")
    trainer.save_extra = lambda folder: os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C half-way through the save
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-0000002" and trainer.state.step == 2
    args = argparse.Namespace(command="pretrain", out_dir=str(tmp_path / "run"))
    assert _what_an_interrupt_kept(args) == (
        f"; the newest checkpoint is {tmp_path / 'run/checkpoint-0000002'}: the same command with --resume "
        "(not --overwrite) resumes it"
    )
    args = argparse.Namespace(command="finetune", out=str(tmp_path / "nothing"), learning_rate=None, seeds=1)
    assert _what_an_interrupt_kept(args) == " before its first checkpoint: run the same command again to start over"
    grid = argparse.Namespace(command="finetune", out=str(tmp_path / "grid"), learning_rate=[1e-3, 5e-4], seeds=1)
    assert "the same command with --resume continues the grid" in _what_an_interrupt_kept(grid)


def test_a_trainer_over_a_dataset_resumes_bit_exactly(tmp_path: Path) -> None:
    """Killed after step 5 (9 micro-batches: past an epoch's short last step) and resumed from step 4's checkpoint
    in a fresh state: the same weights, bit for bit, and the same log, as the run that was never interrupted."""
    reference = toy_trainer(tmp_path / "a")
    assert reference.steps_per_epoch == 3 and reference.epochs_total == 3
    reference.train()
    assert reference.state.step == 8 and reference.state.epoch == 2

    with pytest.raises(KeyboardInterrupt):
        toy_trainer(tmp_path / "b", interrupt_after=9).train()
    torch.manual_seed(123)  # a new process: another global generator state
    resumed = toy_trainer(tmp_path / "b")
    assert resumed.resume() and resumed.state.step == 4
    resumed.train()
    for a, b in zip(reference.raw_model.parameters(), resumed.raw_model.parameters(), strict=True):
        assert torch.equal(a, b)

    def log(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # speed differs run to run

    assert log(tmp_path / "a") == log(tmp_path / "b")
    assert [r["step"] for r in log(tmp_path / "a") if r.get("split") == "eval"] == [4, 8]
    assert "half" in log(tmp_path / "a")[0]  # the loss function's parts are logged


def tiny_pretraining_batch(vocab_size: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, mlm_labels, nsp_labels): 8 sequences of 24-48 real tokens, 15% to predict."""
    g = torch.Generator().manual_seed(0)
    B, T = 8, 48
    lengths = torch.randint(24, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(5, vocab_size, (B, T), generator=g) * mask
    labels = torch.where((torch.rand(B, T, generator=g) < 0.15) & mask.bool(), ids, -100)
    return ids, mask, labels, torch.randint(0, 2, (B,), generator=g)


def test_bf16_pretraining_on_cpu_follows_fp32() -> None:
    """The same model and batch trained 30 steps in fp32 and under CPU bf16 autocast: bf16 keeps 8 bits of mantissa,
    so losses differ by rounding, bounded here at 2% of the fp32 loss per step, and both fall alike."""
    from bertkit import BertConfig, BertForPreTraining
    from bertkit.train.precision import autocast

    config = BertConfig.preset("tiny", vocab_size=300, max_position_embeddings=64)
    ids, mask, labels, nsp = tiny_pretraining_batch(config.vocab_size)
    cpu = torch.device("cpu")
    losses: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = BertForPreTraining(config)
        optimizer = build_optimizer(model, 1e-3, device=cpu)
        dtypes = set()
        model.bert.layers[0].ffn.fc1.register_forward_hook(lambda m, i, out, seen=dtypes: seen.add(out.dtype))
        losses[precision] = []
        for _ in range(30):
            with autocast(amp_dtype(precision, cpu), cpu):
                loss = model(ids, attention_mask=mask, mlm_labels=labels, nsp_labels=nsp).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[precision].append(loss.item())
        assert dtypes == {torch.float32 if precision == "fp32" else torch.bfloat16}
    for full, half in zip(losses["fp32"], losses["bf16"], strict=True):
        assert abs(half - full) <= 0.02 * full
    assert losses["bf16"][-1] < 0.5 * losses["bf16"][0]


def test_training_on_one_thread_follows_two_threads() -> None:
    """The same command gives the same results on any machine, however many cores it has: 30 pre-training steps
    (dropout on) on one intra-op thread and on two. Not bit for bit: a matrix product split across threads may add
    its terms in another order, a difference of float32 rounding (~1e-7 relative) that training carries on, so the
    losses are compared within 1e-5 relative; the dropout masks, drawn by one generator, are the same."""
    from bertkit import BertConfig, BertForPreTraining
    from bertkit.machine import one_intra_op_thread

    config = BertConfig.preset("tiny", vocab_size=300, max_position_embeddings=64)
    ids, mask, labels, nsp = tiny_pretraining_batch(config.vocab_size)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    losses: dict[int, list[float]] = {}
    try:
        for threads in (1, 2):
            torch.manual_seed(0)
            model = BertForPreTraining(config).train()
            optimizer = build_optimizer(model, 1e-3, device=torch.device("cpu"))
            losses[threads] = []
            with one_intra_op_thread() if threads == 1 else contextlib.nullcontext():
                assert torch.get_num_threads() == threads
                for _ in range(30):
                    loss = model(ids, attention_mask=mask, mlm_labels=labels, nsp_labels=nsp).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    losses[threads].append(loss.item())
    finally:
        torch.set_num_threads(before)
    for one, two in zip(losses[1], losses[2], strict=True):
        assert abs(one - two) <= 1e-5 * abs(two)
    assert losses[1][-1] < 0.5 * losses[1][0]  # it trained


def test_a_resume_past_the_steps_asked_for_is_refused(tmp_path: Path) -> None:
    # Resumed from step 8 with --max-steps 3: "now trains to step 3", then "pre-trained to step 8 of 3", exit 0.
    toy_trainer(tmp_path / "run").train()
    trainer = toy_trainer(tmp_path / "run")
    trainer.cfg.max_steps = 3
    with pytest.raises(BertkitError, match=r"it is at step 8, past the 3 steps asked for now .*at least 8 steps"):
        trainer.resume()


def test_a_run_resumed_where_its_precision_computes_otherwise_is_refused(tmp_path: Path, monkeypatch) -> None:
    """`--precision auto` is fp32 on a CPU and bf16 on a GPU: a run begun on one and resumed on the other, with the
    same flags, would go on in another precision. The precision in effect is part of what a resume must match; a
    checkpoint written before it was recorded is not compared on it."""
    import bertkit.train.loop as loop

    toy_trainer(tmp_path / "run").train()
    assert toy_trainer(tmp_path / "run").resume()  # the same device: resumed
    monkeypatch.setattr(loop, "amp_dtype", lambda precision, device: torch.bfloat16)  # as `auto` on a GPU
    with pytest.raises(BertkitError, match=r"started with --precision in effect 'fp32', not 'bf16'"):
        toy_trainer(tmp_path / "run").resume()
    saved = tmp_path / "run" / (tmp_path / "run/latest").read_text().strip() / "training_state.pt"
    state = torch.load(saved, weights_only=False)
    del state["identity"]["--precision in effect"]  # as an older bertkit wrote it
    torch.save(state, saved)
    assert toy_trainer(tmp_path / "run").resume()
