"""The batch-1 inference path: a sentence alone (no padding; on all intra-op threads or on one when the cores are
busy) computes what the padded batch path and transformers compute, and the thread count is always restored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import transformers

import bertkit.model
from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.model import BertForSequenceClassification, ThreadChoice, one_intra_op_thread
from bertkit.tasks.base import run_model
from bertkit.tasks.classify import ClassificationTask

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the film is strictly routine , but the performances carry it a long way toward something better than that .",
]
# The padded batch (its longest row sets T) runs on two threads and unpadded; the sentence alone runs with no
# padding work, on one thread or two. Both compute the same sums in float32 but over matrices of different shapes and
# split differently across threads, so the kernels round differently: real tokens agree to ~1e-6, bounded here at
# 1e-5 as the transformers parity test bounds them.
TOLERANCE = 1e-5


@pytest.fixture
def two_threads(torch_threads) -> None:
    torch_threads(2)


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> tuple[BertModel, transformers.BertModel, Tokenizer]:
    return (
        BertModel.from_pretrained(minilm_dir).eval(),
        transformers.BertModel.from_pretrained(minilm_dir).eval(),
        Tokenizer.from_pretrained(minilm_dir),
    )


class CountingUnpadded(bertkit.model.Unpadded):
    made = 0

    def __init__(self, attention_mask: torch.Tensor):
        CountingUnpadded.made += 1
        super().__init__(attention_mask)


BUSY, IDLE = float("inf"), float("-inf")  # ThreadChoice.serial_until: one thread for small batches, or all


@pytest.fixture
def cores(minilm):
    """Set `minilm`'s view of the cores (BUSY or IDLE) for one test; restored after."""
    ours = minilm[0]
    before = ours.threads.serial_until, ours.threads.busy_in_a_row

    def set_to(until: float) -> None:
        ours.threads.serial_until, ours.threads.busy_in_a_row = until, 0

    yield set_to
    ours.threads.serial_until, ours.threads.busy_in_a_row = before


@pytest.mark.parametrize("busy", [True, False], ids=["one_thread", "all_threads"])
@torch.inference_mode()
def test_sentence_alone_equals_it_in_a_padded_batch_and_transformers(
    minilm, two_threads, cores, monkeypatch, busy: bool
) -> None:
    ours, ref, tok = minilm
    cores(BUSY if busy else IDLE)
    CountingUnpadded.made = 0
    monkeypatch.setattr(bertkit.model, "Unpadded", CountingUnpadded)
    padded = tok.batch(SENTENCES * 3)
    assert padded["attention_mask"].min() == 0
    assert padded["input_ids"].numel() >= ours.serial_below_tokens  # the batch runs on two threads
    batch_out = ours(**padded)
    assert CountingUnpadded.made == 1  # the padded batch took the unpadded path
    for i, text in enumerate(SENTENCES):
        alone = tok.batch([text])
        n = alone["input_ids"].shape[1]
        assert alone["attention_mask"].all()
        out = ours(**alone)
        assert CountingUnpadded.made == 1  # nothing to unpad: the sentence alone took the plain path
        assert (out.last_hidden_state[0] - batch_out.last_hidden_state[i, :n]).abs().max() <= TOLERANCE
        assert (out.pooler_output[0] - batch_out.pooler_output[i]).abs().max() <= TOLERANCE
        expected = ref(**alone)
        assert (out.last_hidden_state - expected.last_hidden_state).abs().max() <= TOLERANCE
        assert (out.pooler_output - expected.pooler_output).abs().max() <= TOLERANCE


@torch.inference_mode()
def test_small_inference_runs_on_one_thread_when_cores_are_busy(minilm, two_threads, cores) -> None:
    ours, _, tok = minilm
    cores(BUSY)
    seen: list[int] = []
    hook = ours.layers[0].register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        small = tok.batch(SENTENCES[:1])
        big = tok.batch(SENTENCES * 3)
        ours(**small)
        ours(**big)
        ours.train()
        ours(**small)  # training keeps the thread count it was given
        ours.eval()
        ours.serial_below_tokens = 0
        ours(**small)
        ours.serial_below_tokens = bertkit.model.SERIAL_TOKENS
        cores(IDLE)
        ours(**small)
    finally:
        ours.serial_below_tokens = bertkit.model.SERIAL_TOKENS
        ours.eval()
        hook.remove()
    assert seen == [1, 2, 2, 2, 2]
    assert torch.get_num_threads() == 2


@torch.inference_mode()
def test_one_thread_and_two_threads_agree(minilm, two_threads, cores) -> None:
    ours, _, tok = minilm
    cores(BUSY)
    batch = tok.batch(SENTENCES[2:])
    serial = ours(**batch)
    ours.serial_below_tokens = 0
    try:
        parallel = ours(**batch)
    finally:
        ours.serial_below_tokens = bertkit.model.SERIAL_TOKENS
    # Only the split of each sum across threads differs: float32 rounding, well under TOLERANCE.
    assert (serial.last_hidden_state - parallel.last_hidden_state).abs().max() <= TOLERANCE


def test_thread_choice_goes_serial_while_forwards_in_a_row_show_busy_cores() -> None:
    choice = ThreadChoice(busy_ratio=0.5, retry_s=10.0, busy_runs=3)
    assert not choice.serial(0.0)
    choice.record(wall_s=0.010, cpu_s=0.0095, now=0.0)  # on a CPU all along: idle cores, all threads stay
    assert not choice.serial(1.0)
    choice.record(wall_s=0.100, cpu_s=0.020, now=2.0)  # asleep 80% of the time: waiting for a busy core
    choice.record(wall_s=0.100, cpu_s=0.020, now=3.0)
    assert not choice.serial(3.0)  # two are not yet evidence (a first forward sleeps too)
    choice.record(wall_s=0.010, cpu_s=0.0095, now=4.0)  # an idle one starts the count again
    for now in (5.0, 6.0):
        choice.record(wall_s=0.100, cpu_s=0.020, now=now)
    assert not choice.serial(6.0)
    choice.record(wall_s=0.100, cpu_s=0.020, now=7.0)  # the third in a row
    assert choice.serial(7.0) and choice.serial(16.9)
    assert not choice.serial(17.0)  # all threads are tried again...
    choice.record(wall_s=0.100, cpu_s=0.020, now=17.0)  # ...and found busy at once: one thread again
    assert choice.serial(17.0) and choice.serial(26.9)
    choice.record(wall_s=0.010, cpu_s=0.0095, now=27.0)  # a retry that finds idle cores resets the count
    choice.record(wall_s=0.100, cpu_s=0.020, now=28.0)
    assert not choice.serial(28.0)


@torch.inference_mode()
def test_forward_measures_its_own_cpu_share(minilm, two_threads, cores, monkeypatch) -> None:
    ours, _, tok = minilm
    cores(IDLE)
    small = tok.batch(SENTENCES[:1])
    monkeypatch.setattr(bertkit.model.time, "thread_time", lambda: 0.0)  # a thread that got no CPU at all
    for _ in range(ours.threads.busy_runs):
        assert not ours.threads.serial(time.monotonic())
        ours(**small)
    assert ours.threads.serial(time.monotonic())  # the next small forwards run on one thread


def test_thread_count_restored_after_nesting_and_errors(two_threads) -> None:
    with one_intra_op_thread():
        with one_intra_op_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # the outer block is still inside
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError), one_intra_op_thread():
        raise ValueError("a failing forward")
    assert torch.get_num_threads() == 2


def test_run_model_skips_autograd_and_matches_each_feature_alone() -> None:
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=100, max_position_embeddings=64)
    model = BertForSequenceClassification(config, num_labels=3)
    model.train()
    g = torch.Generator().manual_seed(2)
    features = [
        {"input_ids": torch.randint(5, 100, (n,), generator=g).tolist(), "token_type_ids": [0] * n}
        for n in (9, 30, 4, 17)
    ]
    logits = run_model(model, ClassificationTask(), features, pad_id=0)
    assert model.training  # restored
    assert all(torch.is_inference(t) for t in logits)  # no autograd bookkeeping was done
    model.eval()
    with torch.no_grad():
        for f, got in zip(features, logits, strict=True):
            alone = model(torch.tensor([f["input_ids"]]), torch.tensor([f["token_type_ids"]])).logits[0]
            # Alone vs. in a padded batch of four: other matrix shapes, float32 rounding (see TOLERANCE).
            assert (got - alone).abs().max() <= TOLERANCE
    assert torch.stack(logits).softmax(-1).shape == (4, 3)  # callers' use outside inference mode still works
