"""Model parity with `transformers` (the oracle), minGPT style: same weights in both, same outputs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import onednn_kernels_run
from hypothesis import given, settings
from hypothesis import strategies as st
from realdata import spread, tsv_rows
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bertkit.model
from bertkit import BertConfig, BertForPreTraining, BertModel, Tokenizer
from bertkit.checkpoint import read_tensors
from bertkit.errors import BertkitError
from bertkit.model import ReadTokens, Unpadded, attention_groups, cross_entropy, dropout


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():  # scoped to each test: a module-level switch would leak into other test files
        yield


def real_batches(data_dir: Path) -> list[list[str]]:
    """Batches of real sentences of very different lengths, so most rows are padded."""
    en = [r["text"] for r in spread(tsv_rows(data_dir / "sst2/dev.tsv"), 48)]
    zh = [r["text"] for r in spread(tsv_rows(data_dir / "chnsenticorp/dev.tsv"), 16)]
    texts = en + zh
    return [texts[i : i + 16] for i in range(0, len(texts), 16)]


class GroupCounting(Unpadded):
    groups_seen: ClassVar[list[int]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        GroupCounting.groups_seen.append(len(self.groups))


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "plain"])
def test_minilm_matches_transformers(minilm_dir: Path, data_dir: Path, unpad: bool, monkeypatch) -> None:
    monkeypatch.setattr(bertkit.model, "Unpadded", GroupCounting)
    monkeypatch.setattr(GroupCounting, "groups_seen", [])
    ours = BertModel.from_pretrained(minilm_dir)
    ours.unpad = unpad
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = Tokenizer.from_pretrained(minilm_dir)
    n_padded = 0
    for texts in real_batches(data_dir):
        batch = tok.batch(texts, max_length=128)
        mask = batch["attention_mask"].bool()
        n_padded += int((~mask).sum())
        o, r = ours(**batch), ref(**batch)
        diff = (o.last_hidden_state - r.last_hidden_state).abs()
        # Every real token: 1e-5. Padding rows are not used by anything: the unpadded path leaves them zero; the
        # plain path computes them, and their values depend on the kernel: transformers' own eager and SDPA paths
        # disagree there several times more than on real tokens, by an amount that changed between its releases
        # (a fresh install failed a 1e-4 bound on activations of size up to ~6), so they get 5e-4.
        assert diff[mask].max() <= 1e-5
        if unpad:
            assert o.last_hidden_state[~mask].abs().max() == 0
        else:
            assert diff[~mask].max() <= 5e-4
        assert (o.pooler_output - r.pooler_output).abs().max() <= 1e-5
    assert n_padded > 1000
    if unpad:  # attention ran in groups of sequences of similar length
        assert len(GroupCounting.groups_seen) == len(real_batches(data_dir)) and min(GroupCounting.groups_seen) >= 2
    else:
        assert GroupCounting.groups_seen == []


def test_large_inference_batches_run_in_bf16_when_asked(minilm_dir: Path, data_dir: Path) -> None:
    """`bf16_from_tokens`: inference batches of that many tokens and more run their matrix products in bf16 and
    return float32 close to transformers' fp32 (bf16 keeps 8 bits of mantissa, a relative error of 2**-8 per
    product: on hidden states of size up to ~6, 0.03 was seen); smaller batches, and training, stay fp32."""
    ours = BertModel.from_pretrained(minilm_dir)
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    tok = Tokenizer.from_pretrained(minilm_dir)
    products: list[torch.dtype] = []
    ours.layers[0].ffn.fc1.register_forward_hook(lambda module, args, out: products.append(out.dtype))
    ours.bf16_from_tokens = 128
    batches = real_batches(data_dir)
    for texts in batches:
        batch = tok.batch(texts, max_length=128)
        assert batch["input_ids"].numel() >= ours.bf16_from_tokens
        mask = batch["attention_mask"].bool()
        o, r = ours(**batch), ref(**batch)
        assert o.last_hidden_state.dtype == o.pooler_output.dtype == torch.float32
        diff = (o.last_hidden_state - r.last_hidden_state)[mask].abs().max()
        assert 1e-4 < diff <= 0.1  # rounded as bf16 rounds, and no more
        cosine = F.cosine_similarity(o.last_hidden_state[mask], r.last_hidden_state[mask], dim=-1)
        assert cosine.min() >= 0.999
        assert (o.pooler_output - r.pooler_output).abs().max() <= 0.01
    assert products == [torch.bfloat16] * len(batches)
    small = tok.batch(["好"])  # 3 tokens
    assert (ours(**small).last_hidden_state - ref(**small).last_hidden_state).abs().max() <= 1e-5
    ours.train()
    ours(**tok.batch(batches[0], max_length=128))
    assert products[-2:] == [torch.float32, torch.float32]


def test_rounded_row_counts_are_few_and_change_no_real_token(monkeypatch) -> None:
    """`Unpadded(recurring_shapes=True)`: the token count rounded up to one of eight sizes per doubling, and the rows
    added after the real tokens never reach them (fp32 here, with rounding switched on as bf16 autocast on the CPU
    would, so that only the row count differs: 1e-5, the same forward blocked over another number of rows)."""
    sizes = {n: Unpadded(torch.ones(1, n), recurring_shapes=True).rows for n in range(1, 4097)}
    assert all(n <= rows <= n + n // 8 for n, rows in sizes.items())
    assert len(set(sizes.values())) <= 8 * 13  # 8 per doubling up to 2**12, and the 16 smallest counts themselves
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    batch = random_batch()
    assert Unpadded(batch["attention_mask"], recurring_shapes=True).rows > int(batch["attention_mask"].sum())
    plain = model(**batch)
    asked: list[torch.device] = []
    monkeypatch.setattr(bertkit.model, "rounds_rows", lambda device: asked.append(device) or True)
    rounded = model(**batch)
    assert asked  # the forward took the rounded path
    assert (plain.last_hidden_state - rounded.last_hidden_state).abs().max() <= 1e-5
    assert (plain.pooler_output - rounded.pooler_output).abs().max() <= 1e-5


def plan_cost(plan: list[tuple[list[int], int]], n_head: int) -> int:
    return sum(n_head * len(seqs) * L * L + bertkit.model.GROUP_COST_SCORES for seqs, L in plan)


def test_on_a_gpu_a_batch_of_up_to_128_tokens_attends_as_one_group() -> None:
    """A group's launches cost a GPU far more than its scores: a batch of 32 sequences of 1..128 tokens is one group
    there (BERT-base's 12 heads), while the CPU's cost splits it."""
    lengths = list(range(4, 129, 4))
    assert len(attention_groups(lengths, 12, 128)) > 1
    assert len(attention_groups(lengths, 12, 128, bertkit.model.GPU_GROUP_COST_SCORES)) == 1


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    lengths=st.lists(st.integers(0, 128), min_size=1, max_size=40),
    n_head=st.sampled_from([1, 2, 4, 12]),
)
def test_attention_groups_cover_each_sequence_once_at_the_least_cost(lengths: list[int], n_head: int) -> None:
    """`attention_groups` against brute force: every non-empty sequence in exactly one group, in a group at least as
    long as it (a multiple of 8, or T), and no split of the longest-first order into runs costs less."""
    T = 128
    plan = attention_groups(lengths, n_head, T)
    placed = sorted(b for seqs, _ in plan for b in seqs)
    assert placed == [b for b, n in enumerate(lengths) if n > 0]
    for seqs, L in plan:
        assert all(lengths[b] <= L for b in seqs) and (L % 8 == 0 or L == T)
    # Brute force over the runs of the longest-first order that end where the rounded length changes.
    order = sorted((b for b in range(len(lengths)) if lengths[b]), key=lambda b: -lengths[b])
    rounded = [min(-(-lengths[b] // 8) * 8, T) for b in order]
    ends = [i for i in range(1, len(order)) if rounded[i] != rounded[i - 1]]
    best = None
    for mask in range(1 << len(ends)) if order and len(ends) <= 12 else []:
        cuts = [0] + [e for k, e in enumerate(ends) if mask >> k & 1] + [len(order)]
        runs = [(order[a:b], rounded[a]) for a, b in itertools.pairwise(cuts)]
        best = plan_cost(runs, n_head) if best is None else min(best, plan_cost(runs, n_head))
    if best is not None:
        assert plan_cost(plan, n_head) == best
    assert plan or not order


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_grouped_attention_computes_what_the_padded_batch_computes(monkeypatch, causal: bool) -> None:
    """Unpadded, sequences of different lengths attend in groups of their own width: the real tokens' outputs and
    every gradient equal the plain path's over the whole padded batch (float32: 1e-5, other block sizes), with a
    group per length (the cost of a group set to 0), an empty row, a left-padded row and a row with a hole."""
    monkeypatch.setattr(bertkit.model, "GROUP_COST_SCORES", 0)
    torch.manual_seed(0)
    config = tiny_config(is_decoder=causal, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    models = [BertForPreTraining(config).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    models[1].bert.unpad = False
    batch = random_batch(B=6, T=37)  # T not a multiple of 8, the groups' length step
    mask = batch["attention_mask"]
    mask[:] = 1
    mask[0, 33:], mask[1, 9:], mask[2, 21:], mask[3, :12] = 0, 0, 0, 0  # row 3 left-padded
    mask[4, :] = 0  # no real token at all
    mask[5, 15:18] = 0  # a hole in the middle
    unpadded = Unpadded(mask, n_head=config.num_attention_heads, causal=causal)
    assert len(unpadded.groups) == 4 and sum(G for G, _, _ in unpadded.groups) == 5, unpadded.groups
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 3], labels[1, 5], labels[3, 20], labels[5, 30] = 7, 9, 11, 13
    # No next-sentence loss: the pooler reads position 0, padding in rows 3 and 4, which only the plain path computes.
    losses = []
    with torch.enable_grad():
        for m in models:
            loss = m(**batch, mlm_labels=labels).mlm_loss
            loss.backward()
            losses.append(loss.item())
    assert abs(losses[0] - losses[1]) <= 1e-5
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        if a.grad is not None or b.grad is not None:
            assert (a.grad - b.grad).abs().max() <= 1e-5, name
    real = mask.bool()
    hidden = [m.bert.eval()(**batch).last_hidden_state for m in models]
    assert (hidden[0] - hidden[1])[real].abs().max() <= 1e-5


def test_the_row_moves_pass_gradients_back_by_copies_equal_to_autograds_sums(monkeypatch) -> None:
    """`Unpadded.group` and `ungroup` hand each gradient row back to the one row it came from (a gather or a copy,
    no atomic add on a GPU): exactly what autograd's backward of a plain gather gives, whose padding slots carry a
    zero gradient, as attention leaves them (several groups, and zero rows after the real tokens)."""
    monkeypatch.setattr(bertkit.model, "GROUP_COST_SCORES", 0)
    mask = torch.ones(5, 21, dtype=torch.long)
    mask[0, 17:], mask[1, 4:], mask[2, 9:], mask[4, :] = 0, 0, 0, 0
    with torch.enable_grad():
        for recurring in (False, True):
            u = Unpadded(mask, recurring, n_head=2)
            assert len(u.groups) == (1 if recurring else 3)
            t = torch.randn(u.rows, 6, requires_grad=True)
            slots = sum(G * L for G, L, _ in u.groups)
            grad_slots = torch.zeros(slots, 6)
            grad_slots[u.scatter] = torch.randn(len(u.scatter), 6)  # the real tokens' slots; zero at padding slots
            grouped = torch.cat([part.flatten(0, 1) for part, _ in u.group(t)])
            (ours,) = torch.autograd.grad(grouped, t, grad_slots)
            (reference,) = torch.autograd.grad(t.index_select(0, u.gather), t, grad_slots)
            assert torch.equal(ours, reference)
            flat = torch.randn(slots, 6, requires_grad=True)
            grad_rows = torch.randn(u.rows, 6)
            sizes = [G * L for G, L, _ in u.groups]
            parts = [p.view(G, L, 6) for p, (G, L, _) in zip(flat.split(sizes), u.groups, strict=True)]
            (ours,) = torch.autograd.grad(u.ungroup(parts), flat, grad_rows)
            (reference,) = torch.autograd.grad(u._extend(flat.index_select(0, u.scatter)), flat, grad_rows)
            assert torch.equal(ours, reference)


def test_bf16_pretraining_on_the_cpu_rounds_rows_and_computes_the_same(monkeypatch) -> None:
    """Under bf16 autocast on the CPU the encoder's and the masked-LM decoder's row counts are rounded up
    (`recurring_rows`); the rows added change neither the loss nor a gradient beyond bf16's rounding (the same
    steps without them: 2% of the loss, gradients at cosine 0.99: different row counts change how each product is
    blocked, and bf16 keeps 8 bits of mantissa)."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()  # no dropout: both runs draw nothing
    batch = random_batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, :21] = batch["input_ids"][0, :21]  # 21 predicted: rounded to 22
    rows: list[int] = []
    model.mlm.transform.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    runs = []
    for rounding in (True, False):
        monkeypatch.setattr(bertkit.model, "rounds_rows", lambda device, rounding=rounding: rounding)
        model.zero_grad()
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0]))
        out.loss.backward()
        assert out.mlm_logits.shape[0] == 21
        runs.append((out.loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert rows == [22, 21]
    (rounded, grads), (plain, plain_grads) = runs
    assert rounded == pytest.approx(plain, rel=0.02)
    for (name, _), a, b in zip(model.named_parameters(), grads, plain_grads, strict=True):
        if b.abs().max() > 0:
            assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) >= 0.99, name


def test_unpadded_path_equals_plain_path_with_gradients() -> None:
    """The fast path (padding removed) computes the same outputs and gradients as the plain padded path."""
    torch.manual_seed(0)
    fast = BertForPreTraining(tiny_config())
    plain = BertForPreTraining(tiny_config())
    plain.load_state_dict(fast.state_dict())
    plain.bert.unpad = False
    fast.eval(), plain.eval()  # dropout off: the two paths draw their random masks over different shapes
    batch = random_batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 3], labels[1, 10], labels[2, 5] = 7, 8, 9
    with torch.enable_grad():
        outs = [m(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0])) for m in (fast, plain)]
        for o in outs:
            o.loss.backward()
    assert batch["attention_mask"].min() == 0  # the batch is padded, so the fast path really ran
    assert (outs[0].loss - outs[1].loss).abs() <= 1e-6
    assert (outs[0].nsp_logits - outs[1].nsp_logits).abs().max() <= 1e-5
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() <= 1e-5, name


def tiny_config(**kw) -> BertConfig:
    return BertConfig.preset("tiny", vocab_size=500, max_position_embeddings=64, **kw)


def random_batch(vocab: int = 500, B: int = 3, T: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    types = torch.zeros_like(ids)
    types[:, T // 2 :] = 1
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 7:] = 0
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def test_pretraining_roundtrip_bertkit_to_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = BertForPreTraining(tiny_config()).eval()
    with torch.no_grad():
        ours.mlm.bias.normal_()  # initialised to zeros: a bias written wrongly would not show
    ours.save_pretrained(tmp_path)
    ref, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch = random_batch()
    o, r = ours(**batch), ref.eval()(**batch)
    real = batch["attention_mask"].bool()  # padding positions are zero in bertkit's unpadded path, unused anyway
    assert (o.mlm_logits - r.prediction_logits)[real].abs().max() <= 1e-5
    assert (o.nsp_logits - r.seq_relationship_logits).abs().max() <= 1e-5
    # The encoder alone loads in AutoModel too.
    _, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]


def test_pretraining_roundtrip_transformers_to_bertkit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**{k: v for k, v in tiny_config().to_dict().items() if k != "architectures"})
    ref = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():
        ref.cls.predictions.bias.normal_()  # initialised to zeros: a bias read wrongly would not show
    ref.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(tmp_path)
    batch = random_batch()
    o, r = ours(**batch), ref(**batch)
    real = batch["attention_mask"].bool()  # padding positions are zero in bertkit's unpadded path, unused anyway
    assert (o.mlm_logits - r.prediction_logits)[real].abs().max() <= 1e-5
    assert (o.nsp_logits - r.seq_relationship_logits).abs().max() <= 1e-5
    # MLM logits at chosen positions only (the fast path) equal the full logits there.
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 3], labels[1, 5] = 7, 9
    fast = ours(**batch, mlm_labels=labels)
    assert torch.allclose(fast.mlm_logits, o.mlm_logits[labels != -100], atol=1e-6)
    ref_loss = ref(**batch, labels=labels, next_sentence_label=torch.tensor([0, 1, 0])).loss
    assert abs(ours(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0])).loss - ref_loss) <= 1e-5


def test_a_decoder_bias_saved_under_its_older_name_loads(tmp_path: Path) -> None:
    # Older checkpoints hold the masked-LM output bias as cls.predictions.decoder.bias alone.
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = transformers.BertConfig(**{k: v for k, v in tiny_config().to_dict().items() if k != "architectures"})
    ref = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():
        ref.cls.predictions.bias.normal_()
    ref.save_pretrained(tmp_path)
    tensors = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "cls.predictions.decoder.weight"}
    tensors["cls.predictions.decoder.bias"] = tensors.pop("cls.predictions.bias")
    (tmp_path / "model.safetensors").unlink()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ours = BertForPreTraining.from_pretrained(tmp_path)
    batch = random_batch()
    real = batch["attention_mask"].bool()
    assert (ours(**batch).mlm_logits - ref(**batch).prediction_logits)[real].abs().max() <= 1e-5


def test_old_gamma_beta_names_load(tmp_path: Path, minilm_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors = read_tensors(minilm_dir)
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in tensors.items()
    }
    assert any(k.endswith("gamma") for k in renamed)
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
    a, b = BertModel.from_pretrained(tmp_path), BertModel.from_pretrained(minilm_dir)
    batch = random_batch(vocab=30000)
    assert torch.equal(a(**batch).last_hidden_state, b(**batch).last_hidden_state)


def test_bertkit_model_dir_loads_in_transformers_bertmodel(tmp_path: Path, minilm_dir: Path) -> None:
    ours = BertModel.from_pretrained(minilm_dir)
    ours.save_pretrained(tmp_path)
    ref, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
    batch = random_batch(vocab=30000)
    mask = batch["attention_mask"].bool()
    diff = (ours(**batch).last_hidden_state - ref.eval()(**batch).last_hidden_state).abs()
    assert diff[mask].max() <= 1e-5


@pytest.mark.parametrize("train", [True, False])
def test_dropout_only_in_training(train: bool) -> None:
    torch.manual_seed(0)
    model = BertModel(tiny_config()).train(train)
    batch = random_batch()
    same = torch.equal(model(**batch).last_hidden_state, model(**batch).last_hidden_state)
    assert same is (not train)


def test_dropout_keeps_one_minus_p_of_each_element_scaled_and_draws_by_the_seed() -> None:
    """bertkit's CPU dropout (16 random bits per element, four elements per 64-bit draw): every element position of
    a draw keeps 1 - p of the time (a lane fed by fewer random bits would keep more), kept values scaled by
    1 / (1 - p), the gradient through the kept ones only, the same seed the same mask."""
    x = torch.randn(1000, 1000)
    for p in (0.1, 0.5, 1 / 3):
        torch.manual_seed(1)
        y = dropout(x, p)
        keep = y != 0
        for lane in range(4):  # 250,000 elements each: the keep fraction's sd is under 0.001
            assert abs(keep.view(-1, 4)[:, lane].float().mean().item() - (1 - p)) < 0.005, (p, lane)
        assert torch.equal(y[keep], x[keep] * (1.0 / (1.0 - p)))
        torch.manual_seed(1)
        assert torch.equal(dropout(x, p), y)
        assert not torch.equal(dropout(x, p), y)  # the next draw is another mask
    assert torch.equal(dropout(x, 0.1, training=False), x) and torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with torch.enable_grad():
        w = x.clone().requires_grad_()
        torch.manual_seed(2)
        dropout(w, 0.25).sum().backward()
        torch.manual_seed(2)
        kept = dropout(x, 0.25) != 0
    assert torch.equal(w.grad, kept.float() / 0.75)


@pytest.mark.parametrize(
    ("rows", "vocab", "spread"),
    [(1, 2, 30.0), (15, 30522, 30.0), (16, 30522, 30.0), (17, 5, 30.0), (463, 21128, 30.0), (463, 21128, 1.0)],
)
def test_cross_entropy_keeping_the_softmax_equals_torchs(rows: int, vocab: int, spread: float) -> None:
    """bertkit's CPU cross-entropy against F.cross_entropy. Logits of spread 30 reach 150 (a naive exp would
    overflow) and put most targets' probabilities below float32's range, so their losses come from the logits;
    of spread 1, as in training, every loss comes from its probability. Loss within 1e-6 relative (float32 sums in
    another order), with an upstream gradient other than 1; gradient within 1e-5 of its scale (0.7 / rows): with
    logits near 150, x - logsumexp(x) carries float32 rounding of about 150 * 2**-24 = 1e-5 in either code, and the
    gradient is exp of it."""
    torch.manual_seed(rows)
    logits = (torch.randn(rows, vocab) * spread).requires_grad_()
    targets = torch.randint(0, vocab, (rows,))
    with torch.enable_grad():
        ours = cross_entropy(logits, targets)
        (ours * 0.7).backward()
        ours_grad, logits.grad = logits.grad, None
        want = F.cross_entropy(logits, targets)
        (want * 0.7).backward()
    assert abs(ours.item() - want.item()) <= 1e-6 * abs(want.item())
    assert (ours_grad - logits.grad).abs().max() <= 1e-5 * 0.7 / rows


def test_cross_entropy_leaves_the_logits_and_refuses_a_second_backward() -> None:
    """Its backward turns the saved softmax into the gradient in place: the logits the caller holds stay as they
    were, and a second backward pass through the same graph (retain_graph) is refused instead of answered from
    the overwritten softmax."""
    torch.manual_seed(0)
    logits = torch.randn(20, 50).requires_grad_()
    kept = logits.detach().clone()
    with torch.enable_grad():
        loss = cross_entropy(logits, torch.randint(0, 50, (20,)))
        loss.backward(retain_graph=True)
        assert torch.equal(logits.detach(), kept)
        with pytest.raises(BertkitError, match="run it once per forward pass"):
            loss.backward()


@pytest.mark.parametrize("rows", [1, 7, 1669])
def test_gelu_equals_the_exact_gelu_forward_and_backward(rows: int) -> None:
    """bertkit's CPU GELU (PyTorch's own kernel) against the exact GELU computed in float64: values and gradients
    within 2e-6 absolute (float32 rounding of erf and of the products; values near 0 make a relative bound
    meaningless), including large and tiny inputs."""
    torch.manual_seed(rows)
    x = torch.cat([torch.randn(rows, 64) * 3, torch.tensor([[-30.0, -5.0, -1e-8, 0.0, 1e-8, 5.0, 30.0] * 9 + [1.0]])])
    x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with torch.enable_grad():
        y = bertkit.model.gelu(x)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        want = x64 * 0.5 * (1 + torch.erf(x64 / 2**0.5))
        want.backward(torch.linspace(-1, 1, y.numel()).view_as(y).double())
    assert y.dtype == torch.float32
    assert (y.double() - want).abs().max() <= 2e-6
    assert (x.grad.double() - x64.grad).abs().max() <= 2e-6


def test_float32_training_compiles_no_onednn_kernel_per_token_count(tmp_path: Path) -> None:
    """The unpadded encoder's token count changes every batch. PyTorch sends a float32 GELU on the CPU to oneDNN,
    which compiles a kernel for each new shape and keeps up to 1,024 (a tiny pre-training run of 400 steps peaked
    at twice the memory); bertkit's GELU does not. Forward and backward at three token counts, in a fresh process
    whose oneDNN reports every kernel it runs, then an inference forward of a batch too large for packed products
    (`bertkit.model.PACKED_TOKENS`) at a fourth: none but the control's (a plain F.gelu)."""
    kernels = onednn_kernels_run(
        "import torch\n"
        "from bertkit import BertConfig, BertForPreTraining\n"
        "torch.manual_seed(0)\n"
        "model = BertForPreTraining(BertConfig.preset('tiny', vocab_size=100)).train()\n"
        "for length in (5, 9, 13):\n"
        "    ids = torch.randint(5, 100, (3, 16))\n"
        "    mask = (torch.arange(16) < torch.tensor([[16], [length], [length - 2]])).long()\n"
        "    out = model(ids, attention_mask=mask)\n"
        "    (out.mlm_logits.sum() + out.nsp_logits.sum()).backward()\n"
        "with torch.no_grad():  # and inference\n"
        "    model.eval()(ids.repeat(3, 1)[:, :15], attention_mask=mask.repeat(3, 1)[:, :15])  # 135 tokens\n"
        "torch.nn.functional.gelu(torch.randn(3, 5))  # the control: PyTorch's own F.gelu, one kernel\n"
        "print('done')\n",
        tmp_path,
        timeout=120,
    )
    assert len(kernels) == 1, kernels  # the control's, and none of the model's
    assert "eltwise_gelu" in kernels[0] and "3x5" in kernels[0]


@pytest.mark.parametrize("padded", [False, True], ids=["full-rows", "padded"])
def test_training_with_dropout_equals_transformers_eager_with_the_same_seed(
    tmp_path: Path, padded: bool, monkeypatch
) -> None:
    """With the same seed and the same dropout function (transformers' F.dropout calls bertkit's here), dropout
    drops the same units as transformers' eager attention (probabilities, then each sub-layer's output), so a
    training step with dropout is checked against the oracle, not only one without: where dropout applies, in
    which order, with what scale. The fast path drops on (N, H) real-token rows, and in the last layer on the rows
    read, where transformers drops on (B, T, H): the plain path is the one that draws the same numbers."""
    original = torch.nn.functional.dropout

    def routed(x, p=0.5, training=True, inplace=False):
        return dropout(x, p) if training and 0 < p < 1 else original(x, p, training, inplace)

    monkeypatch.setattr(torch.nn.functional, "dropout", routed)
    torch.manual_seed(0)
    ours = BertForPreTraining(tiny_config()).train()
    ours.save_pretrained(tmp_path)
    ref = transformers.BertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager").train()
    batch = random_batch()
    ours.bert.unpad = False
    if not padded:
        batch["attention_mask"][:] = 1
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 3], labels[1, 5], labels[2, 2] = 7, 9, 11
    nsp = torch.tensor([0, 1, 0])
    with torch.enable_grad():
        torch.manual_seed(5)
        loss = ours(**batch, mlm_labels=labels, nsp_labels=nsp).loss
        loss.backward()
        torch.manual_seed(5)
        ref_loss = ref(**batch, labels=labels, next_sentence_label=nsp).loss
        ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-5  # float32 sums in different orders
    ours_grad = ours.bert.layers[0].attn.qkv.weight.grad
    ref_attn = ref.bert.encoder.layer[0].attention.self
    ref_grad = torch.cat([ref_attn.query.weight.grad, ref_attn.key.weight.grad, ref_attn.value.weight.grad])
    assert (ours_grad - ref_grad).abs().max() <= 1e-5
    torch.manual_seed(6)  # another seed drops other units: the check above is not dropout switched off
    assert abs(ours(**batch, mlm_labels=labels, nsp_labels=nsp).loss.item() - loss.item()) > 1e-3


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "plain"])
def test_causal_encoder_matches_transformers_is_decoder(tmp_path: Path, unpad: bool) -> None:
    """`is_decoder=True` (left-to-right attention, used by the bidirectional-vs-left-to-right experiment) computes
    what transformers' BertModel computes with the same flag; and no token sees a later one."""
    torch.manual_seed(0)
    ours = BertModel(tiny_config(is_decoder=True)).eval()
    ours.unpad = unpad
    ours.save_pretrained(tmp_path)
    ref = transformers.BertModel.from_pretrained(tmp_path).eval()
    assert ref.config.is_decoder
    batch = random_batch()
    o, r = ours(**batch), ref(**batch)
    real = batch["attention_mask"].bool()
    assert (o.last_hidden_state - r.last_hidden_state)[real].abs().max() <= 1e-5
    # Changing token 10 changes nothing before it.
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][:, 10] = 4
    o2 = ours(**changed)
    assert (o2.last_hidden_state[:, :10] - o.last_hidden_state[:, :10]).abs().max() <= 1e-6
    assert (o2.last_hidden_state[0, 10:] - o.last_hidden_state[0, 10:]).abs().max() > 1e-3
    # The pooler reads the last real token (transformers' reads token 0, which has seen only itself).
    last = batch["attention_mask"].sum(1) - 1
    h_last = o.last_hidden_state[torch.arange(3), last]
    assert torch.allclose(o.pooler_output, torch.tanh(ours.pooler.dense(h_last)), atol=1e-6)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "plain"])
def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_less(unpad: bool) -> None:
    """With dropout on (training mode), checkpointed layers recompute their activations under the same random state:
    loss and gradients within 1e-6 of the plain backward pass (the recomputation is the same arithmetic, so in
    practice equal). What autograd keeps for the backward pass, counted in bytes, shrinks to the layers' inputs."""
    torch.manual_seed(0)
    models = [BertForPreTraining(tiny_config(num_hidden_layers=4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    models[1].bert.gradient_checkpointing = True
    batch = random_batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 3], labels[1, 10], labels[2, 5] = 7, 8, 9
    kept, losses = [], []
    torch.set_grad_enabled(True)  # this module's tests run under no_grad (its fixture restores it)
    for m in models:
        m.train()
        m.bert.unpad = unpad
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # a forward pass to count only
            m(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0]))
        kept.append(sum(saved))
        torch.manual_seed(7)  # the same dropout masks in both
        out = m(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0]))
        out.loss.backward()
        losses.append(out.loss.item())
    assert abs(losses[0] - losses[1]) <= 1e-6
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() <= 1e-6, name
    assert kept[1] < kept[0] / 2, kept  # four layers' activations vs. their inputs


@pytest.mark.parametrize(
    ("padded", "causal"), [(True, False), (False, False), (True, True)], ids=["unpadded", "plain", "causal"]
)
def test_the_last_layer_computes_only_the_positions_read(padded: bool, causal: bool) -> None:
    """With `outputs_at`, the last layer computes only the positions read (and the pooler's: [CLS], or a causal
    model's last real token) past the keys and values: there the hidden states and every gradient are the full
    forward's
    within 1e-5 (float32, products over fewer rows block their sums differently), elsewhere zeros, and torch's
    FLOP counter sees the unread rows' output projection and feed-forward gone. Gradients: within 1e-5 of each
    parameter's largest (the squared states make some large)."""
    torch.manual_seed(0)
    config = tiny_config(is_decoder=causal)
    models = [BertModel(config).eval() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    batch = random_batch()
    if not padded:
        batch["attention_mask"][:] = 1
    asked = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    asked[0, [4, 9]] = asked[1, 14] = asked[2, 20] = True  # (2, 20) is padding when padded: nothing to read there
    real = batch["attention_mask"].bool()
    pooled_at = models[0].pooler.positions(batch["attention_mask"], 3, 24, torch.device("cpu"))
    read = asked & real
    read[torch.arange(3), pooled_at] = True
    outs, flops = [], []
    for model, outputs_at in zip(models, (None, asked), strict=True):
        # The math kernel: FlopCounterMode does not see inside the CPU's fused attention kernel.
        with torch.enable_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            out = model(**batch, outputs_at=outputs_at)
            (out.last_hidden_state[read].pow(2).sum() + out.pooler_output.sum()).backward()
        outs.append(out)
        flops.append(counter.get_total_flops())
    full, part = outs
    assert (part.last_hidden_state[read] - full.last_hidden_state[read]).abs().max() <= 1e-5
    assert not part.last_hidden_state[~read].any()
    assert full.last_hidden_state[real & ~read].abs().min() > 0  # the full forward does compute them
    assert (part.pooler_output - full.pooler_output).abs().max() <= 1e-5
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        if a.grad is not None:
            assert (a.grad - b.grad).abs().max() <= 1e-5 * a.grad.abs().max(), name
    # What the last layer no longer computes: the output projection and feed-forward of every unread row, and on
    # the unpadded path (bidirectional) the unread queries too: their projection and their attention scores.
    H, inner = config.hidden_size, config.intermediate_size
    skipped = int(real.sum() - read.sum()) * 2 * (H * H + 2 * H * inner)
    if padded and not causal:
        unpadded = Unpadded(batch["attention_mask"], n_head=config.num_attention_heads)
        queries = ReadTokens(asked | read, unpadded)
        assert queries.attends_alone
        skipped += int(real.sum() - read.sum()) * 2 * H * H
        for (G, L, _), (_, Lq) in zip(unpadded.groups, queries.plan, strict=True):
            skipped += 4 * G * (L - Lq) * L * H  # two products over (G, L - Lq) queries fewer, L keys
    assert flops[0] - flops[1] == 3 * skipped  # forward and a backward of twice its work


def test_outputs_at_must_be_a_bool_mask_of_the_inputs_shape_on_their_device() -> None:
    model = BertModel(tiny_config()).eval()
    batch = random_batch()
    for wrong in (batch["attention_mask"], torch.zeros(3, 5, dtype=torch.bool), [[True]]):
        with pytest.raises(BertkitError, match="outputs_at must be a bool tensor of shape"):
            model(**batch, outputs_at=wrong)
    elsewhere = torch.zeros(3, 24, dtype=torch.bool, device="meta")
    with pytest.raises(BertkitError, match="outputs_at is on meta and input_ids on cpu"):
        model(**batch, outputs_at=elsewhere)


def test_under_cpu_bf16_the_last_layers_rows_recur_without_padding_too(monkeypatch) -> None:
    """Under bf16 on the CPU every product's row count is rounded so that kernels recur (`recurring_rows`); the
    last layer's K read rows are too, on a batch with padding and one without (which skips `Unpadded`)."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config()).eval()
    rows: list[int] = []
    model.bert.layers[-1].ffn.fc1.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    for padded in (True, False):
        batch = random_batch()
        if not padded:
            batch["attention_mask"][:] = 1
        labels = torch.full_like(batch["input_ids"], -100)
        labels[0, 1:17] = batch["input_ids"][0, 1:17]  # 16 predicted + 3 [CLS] = 19 read: rounded to 20
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0]))
        assert out.mlm_logits.shape[0] == 16 and torch.isfinite(out.loss)
    assert rows == [20, 20]


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(
    lengths=st.lists(st.integers(1, 60), min_size=1, max_size=12),
    share=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    pooler=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_reading_any_positions_of_any_batch_gives_the_full_forwards_states(
    lengths: list[int], share: float, pooler: bool, seed: int
) -> None:
    """Batches of mixed lengths (several attention groups, some of which read nothing) and any positions read,
    with or without a pooler: the states read are the full forward's within 1e-5 (float32, other row counts), the
    rest zeros."""
    g = torch.Generator().manual_seed(seed)
    model = BertModel(tiny_config(), add_pooler=pooler).eval()
    T = max(lengths)
    ids = torch.randint(5, 500, (len(lengths), T), generator=g)
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()
    asked = torch.rand(len(lengths), T, generator=g) < share
    full = model(ids, attention_mask=mask).last_hidden_state
    part = model(ids, attention_mask=mask, outputs_at=asked).last_hidden_state
    read = asked & mask.bool()
    if pooler:
        read[:, 0] = True
    assert not read.any() or (part[read] - full[read]).abs().max() <= 1e-5
    assert not part[~read].any()
