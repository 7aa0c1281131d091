"""The batch-1 inference path: a sentence alone (no padding; on all intra-op threads or on one when the cores are
busy) computes what the padded batch path and transformers compute, and the thread count is always restored."""

from __future__ import annotations

import copy
import gc
import re
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from helpers import onednn_kernels_run

import bertkit.model
from bertkit import BertConfig, BertModel, Tokenizer
from bertkit.machine import ThreadChoice, one_intra_op_thread
from bertkit.model import BertForSequenceClassification
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

    def __init__(self, attention_mask: torch.Tensor, *args, **kwargs):
        CountingUnpadded.made += 1
        super().__init__(attention_mask, *args, **kwargs)


BUSY, IDLE = True, False  # ThreadChoice.fixed: one thread for small batches, or all


@pytest.fixture
def cores(minilm):
    """Set `minilm`'s view of the cores (BUSY or IDLE) for one test; restored after."""
    ours = minilm[0]
    before = ours.threads

    def set_to(serial: bool) -> None:
        ours.threads = ThreadChoice()
        ours.threads.fixed = serial

    yield set_to
    ours.threads = before


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


def test_thread_choice_runs_the_mode_that_was_faster_and_retries_the_other() -> None:
    choice = ThreadChoice(retry_s=5.0, window=3)
    tokens, ALL, ONE = 20, False, True
    for mode, ms in ((ALL, 30.0), (ALL, 2.0), (ALL, 2.0), (ONE, 3.0), (ONE, 3.0), (ONE, 3.0)):
        assert choice.serial(tokens, 0.0) == mode  # each mode is timed `window` times first
        choice.record(tokens, mode, ms * tokens / 1e3)
    assert choice.serial(tokens, 0.0) == ALL  # faster by the median: the slow first forward does not decide
    assert choice.serial(tokens, 4.9) == ALL
    assert choice.serial(tokens, 5.0) == ONE  # the other mode, tried once after retry_s
    assert choice.serial(tokens, 5.1) == ALL
    for _ in range(2):  # the cores get busy: all threads slow down
        choice.record(tokens, ALL, 20.0 * tokens / 1e3)
    assert choice.serial(tokens, 5.2) == ONE
    assert choice.serial(tokens + 200, 5.2) == ALL  # another size class keeps its own times (none yet)
    choice.fixed = False
    assert choice.serial(tokens, 5.2) == ALL


@torch.inference_mode()
def test_forward_times_both_modes_and_runs_the_faster(minilm, two_threads, cores) -> None:
    ours, _, tok = minilm
    cores(None)  # measuring
    window = ours.threads.window
    seen: list[int] = []
    hook = ours.layers[0].register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    small = tok.batch(SENTENCES[:1])
    tokens = small["input_ids"].numel()
    try:
        for _ in range(2 * window):
            ours(**small)
        assert seen == [2] * window + [1] * window  # each mode timed
        for _ in range(window):  # all threads made to look slow: one thread runs
            ours.threads.record(tokens, False, 1.0)
        ours(**small)
        assert seen[-1] == 1
        for _ in range(window):  # and now one thread
            ours.threads.record(tokens, True, 2.0)
        ours(**small)
        assert seen[-1] == 2
    finally:
        hook.remove()
    assert torch.get_num_threads() == 2


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


class CountingProducts:
    """Counts the products `bertkit.model.linear` runs in oneDNN over packed weights, and their row counts."""

    def __init__(self, real):
        self.real, self.rows = real, []

    def __call__(self, x, *args):
        self.rows.append(x.shape[0])
        return self.real(x, *args)


@pytest.fixture
def packed_calls(monkeypatch) -> CountingProducts:
    if not bertkit.model.packed_products_available(torch.device("cpu")):
        pytest.skip("this PyTorch build has no oneDNN products")
    counting = CountingProducts(bertkit.model._ONEDNN_LINEAR)
    monkeypatch.setattr(bertkit.model, "_ONEDNN_LINEAR", counting)
    return counting


@pytest.mark.parametrize("busy", [True, False], ids=["one_thread", "all_threads"])
def test_small_inference_batches_run_over_packed_weights_and_agree_with_the_unpacked(
    minilm, two_threads, cores, packed_calls, busy: bool
) -> None:
    """A sentence alone, a small padded batch and a classifier's read of [CLS] alone run every encoder product over
    packed weights (rows rounded up by `recurring_rows`), and agree with PyTorch's own products within TOLERANCE
    (other kernels, other float32 rounding). Larger batches, autograd and `packed_below_tokens = 0` do not pack."""
    ours, _, tok = minilm
    cores(BUSY if busy else IDLE)
    layers = len(ours.layers)
    alone, padded = tok.batch(SENTENCES[2:]), tok.batch(SENTENCES[:2])
    cls_only = torch.zeros_like(padded["input_ids"], dtype=torch.bool)  # the pooler's [CLS] is added
    cases = {"alone": (alone, None), "padded": (padded, None), "padded, [CLS] read": (padded, cls_only)}
    for name, (batch, at) in cases.items():
        assert batch["input_ids"].numel() < bertkit.model.PACKED_TOKENS
        packed_calls.rows.clear()
        with torch.inference_mode():
            got = ours(**batch, outputs_at=at)
            ours.packed_below_tokens = 0
            try:
                want = ours(**batch, outputs_at=at)
            finally:
                ours.packed_below_tokens = bertkit.model.PACKED_TOKENS
        products = 4 * layers + 1 + (at is not None)  # the pooler; Q apart from K and V in the last layer
        assert len(packed_calls.rows) == products, (name, packed_calls.rows)
        assert all(r == bertkit.model.recurring_rows(r) for r in packed_calls.rows)
        assert (got.pooler_output - want.pooler_output).abs().max() <= TOLERANCE
        rows = batch["attention_mask"].bool() if at is None else at.index_fill(1, torch.tensor([0]), True)
        assert (got.last_hidden_state - want.last_hidden_state)[rows].abs().max() <= TOLERANCE
    packed_calls.rows.clear()
    with torch.inference_mode():
        ours(**tok.batch(SENTENCES * 3))  # larger: PyTorch's own products
    with torch.enable_grad():
        ours(**alone).pooler_output.sum().backward()  # autograd: PyTorch's own products
    ours.zero_grad(set_to_none=True)
    assert packed_calls.rows == []


def test_packed_weights_follow_changes_to_the_weights_and_copies_pack_their_own(packed_calls) -> None:
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=100)).eval()
    ids = torch.randint(5, 100, (1, 12))
    with torch.inference_mode():
        before = model(ids).last_hidden_state
    with torch.no_grad():
        model.layers[0].ffn.fc1.weight.mul_(2.0)  # in place: same storage, a new version
        model.layers[1].attn.qkv.weight.copy_(torch.randn_like(model.layers[1].attn.qkv.weight) * 0.05)
    with torch.inference_mode():
        after = model(ids).last_hidden_state
        model.packed_below_tokens = 0
        want = model(ids).last_hidden_state
        model.packed_below_tokens = bertkit.model.PACKED_TOKENS
    assert packed_calls.rows  # the packed path ran
    assert (after - before).abs().max() > 0.1
    assert (after - want).abs().max() <= TOLERANCE
    twin = copy.deepcopy(model)  # a packed weight cannot be copied: the copy packs anew
    with torch.inference_mode():
        assert (twin(ids).last_hidden_state - after).abs().max() == 0  # same weights, same kernels: same sums


def test_packed_copies_go_with_their_model(packed_calls) -> None:
    """The packed copies are kept beside the model, not in it: they go when the model does."""
    torch.manual_seed(0)
    model = BertModel(BertConfig.preset("tiny", vocab_size=100)).eval()
    with torch.inference_mode():
        model(torch.randint(5, 100, (1, 12)))
    weights = {id(p) for p in model.parameters()}
    mine = {slot for slot in bertkit.model._PACKS if slot[0] in weights}
    assert len(mine) == len(packed_calls.rows)  # one copy per weight
    del model
    gc.collect()
    assert not mine & bertkit.model._PACKS.keys()


def test_hooked_and_replaced_linear_layers_run_as_modules(minilm, packed_calls) -> None:
    """A layer with a hook of its own, or one that is not a plain nn.Linear, runs as the module it is, never over a
    packed copy of a weight it may not have: torch.ao's dynamic quantization finds the model's nn.Linear layers by
    type and replaces every one with an int8 layer, which then computes each product of a small batch (the last
    layer's Q apart from K and V too); its answer moves from float32's by int8 rounding (pooler output cosine 0.97
    and 0.98 for these sentences: bounded at 0.9) and no product runs packed."""
    ours, _, tok = minilm
    if "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("this PyTorch build has no x86 quantized engine")
    batch = tok.batch(SENTENCES[:2])
    cls_only = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    fc1 = ours.layers[0].ffn.fc1
    seen = []
    hook = fc1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    try:
        with torch.inference_mode():
            ours(**batch)
    finally:
        hook.remove()
    assert len(seen) == 1 and len(packed_calls.rows) == 4 * len(ours.layers)  # the pooler's and all others but fc1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that this API moves to torchao
        int8 = torch.ao.quantization.quantize_dynamic(ours, {torch.nn.Linear}, dtype=torch.qint8)
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(m, quantized) for m in int8.modules() if isinstance(m, (torch.nn.Linear, quantized)))
    assert isinstance(int8.layers[-1].attn.qkv, quantized)
    for at in (None, cls_only):
        with torch.inference_mode():
            want = ours(**batch, outputs_at=at).pooler_output
            packed_calls.rows.clear()
            got = int8(**batch, outputs_at=at).pooler_output
        assert packed_calls.rows == []
        cosine = torch.nn.functional.cosine_similarity(want, got)
        assert (cosine > 0.9).all() and (cosine < 0.9999).all(), cosine  # int8 ran, and close


def test_small_batches_of_every_length_compile_kernels_for_few_row_counts(tmp_path: Path) -> None:
    """oneDNN compiles kernels for each product shape it meets and keeps them, each holding memory: sentences of
    every length from 1 to 127 tokens run their packed products at `recurring_rows` sizes only, 40 of them, in a
    fresh process whose oneDNN reports every kernel it runs."""
    kernels = onednn_kernels_run(
        "import torch\n"
        "from bertkit import BertConfig, BertModel\n"
        "torch.manual_seed(0)\n"
        "model = BertModel(BertConfig.preset('tiny', vocab_size=100)).eval()\n"
        "with torch.inference_mode():\n"
        "    for n in range(1, 128):\n"
        "        model(torch.randint(5, 100, (1, n)))\n"
        "print('done')\n",
        tmp_path,
    )
    products = [line for line in kernels if "inner_product" in line]
    rows = {int(m.group(1)) for line in products for m in [re.search(r",mb(\d+)ic", line)] if m}
    assert len(products) >= 127 * 9  # 2 layers x 4 products + the pooler, per sentence
    assert rows == {bertkit.model.recurring_rows(n) for n in range(1, 128)}
    assert len(rows) == 40


def test_a_compiled_encoder_layer_traces_in_one_graph() -> None:
    """torch.compile cannot trace the context variable `packed_products` sets: `linear` leaves it out of a graph
    being compiled, which would otherwise break at each product (the pre-training compile benchmark compiles encoder
    layers). In eval mode: training's dropout draws with an in-place operator that breaks a graph anyway."""
    torch.manual_seed(0)
    layer = bertkit.model.EncoderLayer(BertConfig.preset("tiny", vocab_size=100)).eval()
    explained = torch._dynamo.explain(layer)(torch.randn(2, 9, 128), None)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
