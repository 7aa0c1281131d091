"""The BERT model (Devlin et al., 2018), readable in one sitting.

Embeddings (token + learned position + segment) -> L post-LN Transformer encoder layers -> pooler, plus the
pre-training heads (masked LM tied to the word embeddings, next-sentence prediction).

Parameter names here are short and ours (`attn.qkv`, `ffn.fc1`, `ln1`); `bertkit.checkpoint` translates them to
and from Hugging Face names, so model directories stay interchangeable with `transformers`.
Shapes: B batch, T sequence length, N real (unpadded) tokens of a batch, R those rows rounded up to a recurring
size, K tokens whose output is read (K' rounded as R is), H hidden size, nh heads, hs head size, V vocabulary,
P predicted (masked-LM) positions.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from bertkit.config import BertConfig
from bertkit.constants import IGNORE_INDEX
from bertkit.crf import CRF, allowed_transitions
from bertkit.errors import BertkitError
from bertkit.machine import ThreadChoice, one_intra_op_thread

# torch.compiler.is_exporting appeared in torch 2.7 (bertkit export requires that torch; elsewhere this is False).
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def _exporting() -> bool:
    """Whether a graph is being exported or traced (ONNX, torch.export): its shapes are symbols, and it must serve
    every input."""
    return _is_exporting() or torch.jit.is_tracing()


class _WithoutOneDNN:
    """Within it, PyTorch's operators on the CPU take their own kernels rather than oneDNN's. The switch is the
    process's: another thread's operator in that instant takes PyTorch's kernel too (the same result, maybe slower)."""

    def __enter__(self) -> None:
        self.was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.mkldnn.enabled = self.was


class _CpuGelu(torch.autograd.Function):
    """Exact GELU forward and backward by PyTorch's own vectorised CPU kernels."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        with _WithoutOneDNN():
            return F.gelu(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        with _WithoutOneDNN():
            return torch.ops.aten.gelu_backward(grad, x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, as in the original BERT.

    On the CPU, PyTorch hands a float32 GELU to oneDNN, which compiles a kernel for each tensor shape (milliseconds,
    forward and backward each) and caches up to 1,024 of them, each holding memory. Without padding the encoder's
    token count changes from batch to batch, so nearly every training step compiled two new kernels, and a long
    `predict` grew with each batch until the cache was full. PyTorch's own kernel compiles nothing and runs within
    about 10% of a kernel oneDNN has compiled already (`benchmarks/gelu_kernel.py` measures whole training runs).
    bf16 (autocast, whose token counts recur: `recurring_rows`), other devices, compiled and exported graphs keep
    F.gelu."""
    if (
        x.device.type != "cpu"
        or x.dtype != torch.float32
        or not torch.backends.mkldnn.enabled
        or torch.compiler.is_compiling()
        or _exporting()
    ):
        return F.gelu(x)
    if not (x.requires_grad and torch.is_grad_enabled()):  # inference: no autograd node (it costs a batch of 1)
        with _WithoutOneDNN():
            return F.gelu(x)
    return _CpuGelu.apply(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (Hugging Face's `gelu_new`)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu": gelu,  # exact (erf) GELU, as in the original BERT
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function named by a config's `hidden_act`; raises on an unsupported name."""
    if name not in ACTIVATIONS:
        raise BertkitError(f"hidden_act {name!r} is not supported; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, as F.dropout: in training, each element zeroed with probability p, the rest scaled by
    1 / (1 - p).

    On the CPU, F.dropout draws its mask with bernoulli_, one of the costliest operators of a pre-training step
    (benchmarks/results/pretrain_profile_cpu.json, written by benchmarks/pretrain_profile.py). Here each element
    takes 16 bits of full-range 64-bit draws (four elements per draw) and is kept when they reach p's threshold, so
    p is rounded to a multiple of 1/65536. The same seed drops the same elements. On other devices, F.dropout
    (fused there)."""
    if not training or p == 0.0 or p >= 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    bits = torch.empty(-(-x.numel() // 4), dtype=torch.int64).random_(-(2**63), None)  # uniform over all 64 bits
    keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= round(p * 65536) - 32768  # P = 1 - p
    return (x * keep).mul_(1.0 / (1.0 - p))  # autograd keeps the bool mask, a byte per element


class Dropout(nn.Dropout):
    """nn.Dropout with bertkit's `dropout` (faster on the CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# oneDNN's float32 product over a weight packed for it once (PyTorch's CPU build has it where oneDNN is enabled).
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
# Whether this thread's encoder is running a small inference batch: `linear` then packs (`packed_products`).
_PACKED = contextvars.ContextVar("bertkit_packed_products", default=False)


def packed_products_available(device: torch.device) -> bool:
    """Whether `linear` can run products in oneDNN over packed weights on `device` (the CPU, oneDNN enabled)."""
    return (
        device.type == "cpu"
        and _ONEDNN_LINEAR is not None
        and _ONEDNN_PACK is not None
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def _packing() -> bool:
    """Whether this thread is inside `packed_products`; never while torch.compile traces a graph, so that the
    context variable is no part of it."""
    return not torch.compiler.is_compiling() and _PACKED.get()


@contextmanager
def packed_products() -> Iterator[None]:
    """Within it, in this thread, `linear` runs the float32 products of plain nn.Linear layers in oneDNN over packed
    weights (no autograd: inference only). `BertModel` enters it for small inference batches on the CPU
    (`packed_below_tokens`)."""
    token = _PACKED.set(True)
    try:
        yield
    finally:
        _PACKED.reset(token)


# Packed copies of weights (`_pack`): (id of the weight, first row, end row) -> (a weak reference to the weight, its
# state when packed, the packed copy). Kept here, not in the modules: a packed copy is an opaque tensor that copy and
# pickle cannot read, and the modules stay plain nn.Linear, which torch's dynamic quantization and adapter libraries
# find and replace by type. An entry goes when its weight does.
_PACKS: dict[tuple[int, int, int], tuple[weakref.ref, tuple, torch.Tensor]] = {}


def _plain(layer: nn.Module) -> bool:
    """Whether `layer` is an nn.Linear as torch makes it (not replaced by a quantized or adapted layer, no forward
    hooks of its own), so that its product may be computed from its weight and bias directly. Hooks set for every
    module (`register_module_forward_hook`, as torch's FLOP counter and module tracker set them) are not asked:
    they would change what is computed while it is being measured."""
    return type(layer) is nn.Linear and not layer._forward_hooks and not layer._forward_pre_hooks


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`; inside `packed_products`, a plain nn.Linear's float32 product runs in oneDNN over a copy of its
    weight packed once.

    A small batch's product has a few dozen rows against a weight of hundreds of thousands of values, and there
    PyTorch's float32 product on the CPU (MKL's sgemm, which lays the weight out afresh on each call) runs far below
    the rate it reaches on large batches; oneDNN over a weight laid out for it in advance, as onnxruntime lays out
    its own, is much faster (`benchmarks/batch1_latency.py` measures the encoder both ways, and onnxruntime). The
    packed copy (memory as large as the weight) is kept per weight and made again when the weight changes."""
    if _packing() and _plain(layer):
        return _product(layer, x, 0, layer.out_features)
    return layer(x)


def linear_part(layer: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(..., in) -> (..., stop - start): outputs `start:stop` of `layer(x)`, as SelfAttention computes its queries
    and its keys and values for different tokens. A plain nn.Linear multiplies those rows of its weight alone (over
    a packed copy inside `packed_products`); another layer (quantized, adapted, hooked) computes all its outputs."""
    if not _plain(layer):
        return layer(x)[..., start:stop]
    return _product(layer, x, start, stop)


def _product(layer: nn.Linear, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """(..., in) -> (..., stop - start): x times rows `start:stop` of `layer`'s weight (plus their biases). Inside
    `packed_products`, for a float32 batch on the CPU, in oneDNN over a packed copy, its rows rounded up by
    `recurring_rows` (oneDNN compiles kernels for each shape it meets and keeps them, each holding memory, and
    rounding bounds their number); PyTorch's own product otherwise."""
    weight, bias = layer.weight, layer.bias
    whole = start == 0 and stop == weight.shape[0]
    part = weight if whole else weight[start:stop]
    bias = bias if bias is None or whole else bias[start:stop]
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not (_packing() and rows and x.dtype == part.dtype == torch.float32 and x.device.type == "cpu"):
        return F.linear(x, part, bias)
    flat = _with_zero_rows(x.reshape(rows, x.shape[-1]), recurring_rows(rows))  # (rows', in)
    y = _ONEDNN_LINEAR(flat, _pack(weight, start, stop), bias, "none", [], "")  # (rows', stop - start)
    return y[:rows].reshape(*x.shape[:-1], stop - start)


def _pack(weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The packed copy of rows `start:stop` of `weight`, packed again once the weight changed."""
    # An inference tensor (made under torch.inference_mode) keeps no version count.
    state = (weight.data_ptr(), 0 if weight.is_inference() else weight._version, weight.device)
    slot = (id(weight), start, stop)
    kept = _PACKS.get(slot)
    if kept is None or kept[0]() is not weight or kept[1] != state:
        packed = _ONEDNN_PACK(weight[start:stop].detach().contiguous(), 32)  # packed for a batch of about 32 rows
        gone = weakref.ref(weight, lambda _, slot=slot: _PACKS.pop(slot, None))
        kept = _PACKS[slot] = (gone, state, packed)
    return kept[2]


class Embeddings(nn.Module):
    """Sum of token, learned absolute position and segment (token type) embeddings; LayerNorm; dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.ln = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids -> (B, T, H); or, unpadded, (N,) ids with their (N,) positions -> (N, H)."""
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.ln(x))


def recurring_rows(n: int) -> int:
    """`n` rounded up to one of eight sizes per doubling (at most 1/8 more): the row count of a matrix product whose
    kernel is compiled per shape (oneDNN's, for bf16 on the CPU), so that batches of different sizes share kernels
    instead of compiling one each (see `rounds_rows`)."""
    step = 1 << max(n.bit_length() - 4, 0)
    return -(-n // step) * step


def rounds_rows(device: torch.device) -> bool:
    """Whether products on `device` now run in bf16 on the CPU (autocast), where each new matrix shape costs a
    kernel compilation: without rounding, a batch of a size not seen before runs slower than a repeated one."""
    cpu_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return device.type == "cpu" and cpu_bf16


# What one more attention group costs, in attention scores (n_head x L x L per sequence): its own handful of
# operators forward and backward. Calibrated on the CPU by `python benchmarks/attention_groups.py`.
GROUP_COST_SCORES = 28_000
# The same on a GPU, where a score costs far less and a launch far more: each group's operators cost ~50 us of
# launches per layer (forward and backward), the time a recent GPU takes for ~3e7 scores of bf16 attention. An
# estimate from the two rates, not a calibration: a batch of 32 sequences of up to 128 tokens stays one group.
GPU_GROUP_COST_SCORES = 1 << 25
GROUP_LENGTH_MULTIPLE = 8  # a group's length is rounded up to this: fewer distinct shapes


def group_cost_on(device: torch.device) -> int:
    """What one more attention group costs on `device`, in attention scores: `GROUP_COST_SCORES` on the CPU,
    `GPU_GROUP_COST_SCORES` elsewhere."""
    return GROUP_COST_SCORES if device.type == "cpu" else GPU_GROUP_COST_SCORES


def attention_groups(
    lengths: list[int], n_head: int, T: int, group_cost: int | None = None
) -> list[tuple[list[int], int]]:
    """Sequences grouped for attention, as (sequence indices, padded length L): each group attends over (G, L)
    instead of the whole batch over (B, T), so a short sequence beside long ones does not pay for their length.

    Sequences are taken longest first; a group is a run of them with lengths rounded up to
    `GROUP_LENGTH_MULTIPLE`, and the runs are chosen (dynamic programming) to minimise the scores computed,
    n_head x G x L^2 per group, plus `group_cost` per group (default `GROUP_COST_SCORES`, the CPU's). Empty
    sequences join no group."""
    group_cost = GROUP_COST_SCORES if group_cost is None else group_cost
    order = sorted((b for b in range(len(lengths)) if lengths[b] > 0), key=lambda b: -lengths[b])
    step = GROUP_LENGTH_MULTIPLE
    bins: list[tuple[int, list[int]]] = []  # (rounded length, sequences), longest first
    for b in order:
        L = min(-(-lengths[b] // step) * step, T)
        if bins and bins[-1][0] == L:
            bins[-1][1].append(b)
        else:
            bins.append((L, [b]))
    best = [0.0] + [float("inf")] * len(bins)  # best[i]: the cost of grouping bins[:i]
    cut = [0] * (len(bins) + 1)
    for i in range(1, len(bins) + 1):
        count = 0
        for j in range(i - 1, -1, -1):  # the group bins[j:i], of length bins[j]'s
            count += len(bins[j][1])
            cost = best[j] + n_head * count * bins[j][0] ** 2 + group_cost
            if cost < best[i]:
                best[i], cut[i] = cost, j
    groups, i = [], len(bins)
    while i > 0:
        j = cut[i]
        groups.append(([b for _, seqs in bins[j:i] for b in seqs], bins[j][0]))
        i = j
    return groups[::-1]


def _with_zero_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """`t` (N, ...) with zero rows added up to `rows` (R >= N): `Unpadded`'s rows after the real tokens'."""
    extra = rows - t.shape[0]
    return torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) if extra else t


def _slots(
    plan: list[tuple[list[int], int]], counts: torch.Tensor, seq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Lay rows out in attention groups: `seq` (n,) the sequence of each row, a sequence's rows contiguous and in
    sequence order, `counts` (B,) how many each has, `plan` the groups as (sequences, slots L). Returns `gather`
    (sum G x L,) the row each slot reads, `scatter` (n,) the slot of each row, and per group (G, L) which slots
    hold a row. A slot past its sequence's rows reads the row where the sequence's would start (clamped to the
    last row; any row would do): the caller hides or drops it, so it gets no gradient."""
    device = seq.device
    n = len(seq)
    starts = counts.cumsum(0) - counts  # (B,) each sequence's first row
    base = torch.zeros(len(counts), dtype=torch.long, device=device)  # where each sequence starts in the slots
    gathers, filled, offset = [], [], 0
    for seqs, L in plan:
        seqs_t = torch.tensor(seqs, device=device)
        slots = torch.arange(L, device=device)[None]  # (1, L)
        full = slots < counts[seqs_t][:, None]  # (G, L)
        gathers.append((starts[seqs_t][:, None] + slots * full).flatten().clamp_(max=max(n - 1, 0)))
        filled.append(full)
        base[seqs_t] = offset + torch.arange(len(seqs), device=device) * L
        offset += len(seqs) * L
    gather = torch.cat(gathers) if gathers else seq.new_zeros(0)
    scatter = base[seq] + torch.arange(n, device=device) - starts[seq]  # (n,) its group slot
    return gather, scatter, filled


class Unpadded:
    """Where the real tokens of a padded (B, T) batch sit, so that every layer runs on the N real tokens alone:
    `unpad` (B, T, ...) -> (R, ...), `pad` (R, ...) -> (B, T, ...) with zeros, and for the attention product
    `group` (R, 3H) -> sequences of similar length laid out (G, L, 3H) with their bias, `ungroup` back to (R, H).

    With `recurring_shapes` (bf16 on the CPU, see `rounds_rows`), R is N rounded up by `recurring_rows` and
    attention keeps one group of the batch's width T: shapes that recur from batch to batch, where a new one costs
    a kernel compilation. Otherwise R is N and the groups are `attention_groups`'. The R - N rows after the real
    tokens start as zeros; no real token ever reads what they become, and no gradient flows back through them."""

    def __init__(
        self,
        attention_mask: torch.Tensor,
        recurring_shapes: bool = False,
        *,
        n_head: int = 1,
        causal: bool = False,
        bias_dtype: torch.dtype = torch.float32,
    ):
        self.B, self.T = attention_mask.shape
        self.index = attention_mask.flatten().nonzero().squeeze(1)  # (N,) flat positions of real tokens
        N = len(self.index)
        self.recurring_shapes, self.causal = recurring_shapes, causal
        self.rows = recurring_rows(N) if recurring_shapes else N  # R
        self.positions = self._extend(self.index % self.T)  # (R,) position of each real token in its sequence
        device = self.index.device
        lengths = (attention_mask != 0).sum(1)  # (B,)
        if N == 0:
            self.plan = []
        elif recurring_shapes:
            self.plan = [(list(range(self.B)), self.T)]
        else:
            self.plan = attention_groups(lengths.tolist(), n_head, self.T, group_cost_on(device))
        self.seq = self.index // self.T  # (N,) the sequence of each real token
        # gather (sum G * L,): the row of the (R, 3H) input each group slot reads; scatter (N,): each token's slot
        self.gather, self.scatter, real = _slots(self.plan, lengths, self.seq)
        # (G, L, bias) per group: the bias hides the padding slots as keys, and their outputs are dropped
        self.groups = [
            (len(seqs), L, attention_bias(r, bias_dtype, causal, L, device))
            for (seqs, L), r in zip(self.plan, real, strict=True)
        ]

    def _extend(self, t: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (R, ...): zero rows after the real tokens'."""
        return _with_zero_rows(t, self.rows)

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (R, ...): the rows of the real tokens."""
        return self._extend(t.flatten(0, 1).index_select(0, self.index))  # (R, ...)

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """(R, ...) -> (B, T, ...), zeros at the padded positions."""
        return _at_positions(t, self.index, self.B, self.T)

    def group(self, t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(R, C) -> per group, its sequences laid out (G, L, C), with the group's (G, 1, 1, L) attention bias
        ((G, 1, L, L) when causal)."""
        parts = _to_slots(t, self.gather, self.scatter).split([G * L for G, L, _ in self.groups])
        return [(part.view(G, L, -1), bias) for part, (G, L, bias) in zip(parts, self.groups, strict=True)]

    def ungroup(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Per group (G, L, C) -> (R, C): each real token's row back in its place."""
        return self._extend(_from_slots(parts, self.scatter))  # (R, C)


class ReadTokens:
    """The tokens whose output the caller reads (`BertModel.forward`'s `outputs_at`), for the last layer, which
    computes their rows alone past attention: `select` (the layer's input rows) -> (K', C), `pad` -> (B, T, C).

    On the unpadded path their queries also attend alone: `group` lays out the (K', H) queries per attention group
    of `Unpadded` as (G, Lq, H), Lq the most any sequence of the group reads, and `ungroup` brings the outputs back
    (`attends_alone`). A batch without padding (no `Unpadded`), a causal model and recurring shapes attend from
    every token, then select. K' is K, or with recurring shapes (`recurring`, or `Unpadded`'s) K rounded up by
    `recurring_rows`: the rows after the K start as zeros and are dropped."""

    def __init__(self, positions: torch.Tensor, unpadded: Unpadded | None, recurring: bool = False):
        self.B, self.T = positions.shape
        self.unpadded = unpadded
        if unpadded is None:
            self.rows = positions.flatten().nonzero().squeeze(1)  # (K,) flat positions of (B, T)
            self.index = self.rows
        else:
            self.rows = positions.flatten().index_select(0, unpadded.index).nonzero().squeeze(1)  # (K,) of R's
            self.index = unpadded.index.index_select(0, self.rows)  # (K,) their flat positions
            recurring = unpadded.recurring_shapes
        self.count = recurring_rows(len(self.rows)) if recurring else len(self.rows)  # K'
        self.attends_alone = (
            unpadded is not None and bool(unpadded.groups) and not (unpadded.causal or unpadded.recurring_shapes)
        )
        self.plan: list[tuple[list[int], int]] = []  # (sequences, Lq) per attention group, when attending alone
        if self.attends_alone:
            seq = unpadded.seq.index_select(0, self.rows)  # (K,) the sequence of each read token
            counts = torch.bincount(seq, minlength=self.B)  # (B,) how many each sequence reads
            most = counts.tolist()
            self.plan = [(seqs, max(most[b] for b in seqs)) for seqs, _ in unpadded.plan]  # (sequences, Lq)
            self.gather, self.scatter, _ = _slots(self.plan, counts, seq)

    def select(self, t: torch.Tensor) -> torch.Tensor:
        """The layer's rows ((B, T, C) or (R, C)) -> (K', C): those of the tokens read."""
        rows = t.flatten(0, 1) if self.unpadded is None else t  # (B x T, C) or (R, C)
        return _with_zero_rows(rows.index_select(0, self.rows), self.count)  # (K', C)

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """(K', C) -> (B, T, C), zeros where nothing is read."""
        return _at_positions(t, self.index, self.B, self.T)

    def group(self, q: torch.Tensor) -> list[torch.Tensor]:
        """(K', C) queries -> per attention group of `Unpadded`, (G, Lq, C) (only when `attends_alone`)."""
        parts = _to_slots(q, self.gather, self.scatter).split([len(seqs) * Lq for seqs, Lq in self.plan])
        return [part.view(len(seqs), Lq, q.shape[1]) for part, (seqs, Lq) in zip(parts, self.plan, strict=True)]

    def ungroup(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Per group (G, Lq, C) -> (K', C)."""
        return _with_zero_rows(_from_slots(parts, self.scatter), self.count)


def _at_positions(t: torch.Tensor, index: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Rows (n', ...) whose first n sit at the flat positions `index` (n,) -> (B, T, ...), zeros elsewhere."""
    out = t.new_zeros(B * T, *t.shape[1:])
    # In place: the out-of-place form copies the zeros once more.
    out.index_copy_(0, index, t[: len(index)])
    return out.view(B, T, *t.shape[1:])  # (B, T, ...)


def _to_slots(t: torch.Tensor, gather: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
    """(n', C) rows -> (slots, C): slot s reads row `gather[s]` (row i sits in slot `scatter[i]`)."""
    if torch.is_grad_enabled() and t.requires_grad:
        return _ToGroups.apply(t, gather, scatter)
    return t.index_select(0, gather)


def _from_slots(parts: list[torch.Tensor], scatter: torch.Tensor) -> torch.Tensor:
    """Per group (G, L, C) slots -> (n, C) rows, row i from slot `scatter[i]`."""
    flat = torch.cat([part.flatten(0, 1) for part in parts]) if len(parts) > 1 else parts[0].flatten(0, 1)
    if torch.is_grad_enabled() and flat.requires_grad:
        return _FromGroups.apply(flat, scatter)
    return flat.index_select(0, scatter)


# The two row moves of `Unpadded` and `ReadTokens` with backward passes that copy rows instead of adding them.
# Autograd's backward of a gather adds each gradient row into place (`index_add_`), which a GPU does with an atomic
# add per element, slow in bf16. Each move here is the other's inverse on the rows laid out, so each backward is a
# plain gather or copy. That is exact because the slots a group holds for padding get a zero gradient: the
# attention bias gives them zero weight as keys, and their outputs as queries are never read.


class _ToGroups(torch.autograd.Function):
    """(R, C) rows -> (sum G x L, C) group slots, slot s reading row `gather[s]`; row i sits in slot `scatter[i]`."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, gather: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(scatter)
        ctx.rows = t.shape[0]
        return t.index_select(0, gather)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (scatter,) = ctx.saved_tensors
        real = grad.index_select(0, scatter)  # (N, C): each row's gradient, from its own slot
        return _with_zero_rows(real, ctx.rows), None, None


class _FromGroups(torch.autograd.Function):
    """(sum G x L, C) group slots -> (N, C) rows, row i reading slot `scatter[i]`."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(scatter)
        ctx.slots = flat.shape[0]
        return flat.index_select(0, scatter)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (scatter,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.slots, *grad.shape[1:])  # padding slots: no row reads them
        return out.index_copy_(0, scatter, grad), None


def reverse_real_tokens(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reverse the real tokens of each row of a right-padded (B, T, ...) tensor; padding stays at the end.
    Its own inverse. A right-to-left model reads its input this way."""
    T = attention_mask.shape[1]
    pos = torch.arange(T, device=attention_mask.device)[None]  # (1, T)
    src = torch.where(attention_mask.bool(), attention_mask.sum(1, keepdim=True) - 1 - pos, pos)  # (B, T)
    if x.dim() > 2:
        src = src.view(*src.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, src)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + bias) v, with dropout on the attention probabilities: (B, nh, T, hs)."""
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    # On the CPU, scaled_dot_product_attention's fused kernel has no dropout: with dropout it falls back to a
    # general math path that is slower than the same steps written out. These are transformers' "eager" steps, so
    # with the same seed and dropout function they drop the same probabilities.
    scores = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # (B, nh, T, T); in place: the product's
    if bias is not None:  # backward needs only q and k
        scores.add_(bias)
    return dropout(scores.softmax(-1), dropout_p) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention; Q, K and V come from one fused projection."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.qkv = nn.Linear(H, 3 * H)
        self.proj = nn.Linear(H, H)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None,
        unpadded: Unpadded | None = None,
        read: ReadTokens | None = None,
    ) -> torch.Tensor:
        """(B, T, H), or unpadded (R, H) -> the same shape; with `read`, (K', H) at the tokens read alone."""
        if read is not None and read.attends_alone:
            return linear(self.proj, self._attend_from(x, unpadded, read))  # (K', H)
        qkv = linear(self.qkv, x)  # (B, T, 3H), or (R, 3H) unpadded
        if unpadded is None:
            y = self._attend(*self._heads(qkv, 3), attn_bias)  # (B, T, H)
        elif unpadded.groups:  # each group of sequences of similar length attends over its own (G, L) layout
            parts = [self._attend(*self._heads(part, 3), bias) for part, bias in unpadded.group(qkv)]  # (G, L, H)
            y = unpadded.ungroup(parts)  # (R, H)
        else:  # no token
            y = qkv.new_zeros(0, qkv.shape[1] // 3)
        return linear(self.proj, y if read is None else read.select(y))  # (B, T, H), (R, H) or (K', H)

    def _attend_from(self, x: torch.Tensor, unpadded: Unpadded, read: ReadTokens) -> torch.Tensor:
        """(R, H) -> (K', H): the read tokens' queries attend over every token's keys and values; the other
        queries are not computed."""
        H = x.shape[1]
        # The fused projection's two parts, as two products over different rows: Q for the tokens read, K and V for
        # every token.
        q = linear_part(self.qkv, read.select(x), 0, H)  # (K', H): the weight's first H rows are Q's
        kv = linear_part(self.qkv, x, H, 3 * H)  # (R, 2H)
        parts = []
        for (kv_g, key_bias), q_g in zip(unpadded.group(kv), read.group(q), strict=True):  # (G, L, 2H), (G, Lq, H)
            if q_g.shape[1] == 0:  # no sequence of the group is read: no attention kernel for zero queries
                parts.append(q_g)
                continue
            parts.append(self._attend(*self._heads(q_g, 1), *self._heads(kv_g, 2), key_bias))  # (G, Lq, H)
        return read.ungroup(parts)  # (K', H)

    def _heads(self, t: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
        """(B, T, n x H) -> n tensors (B, nh, T, hs): Q, K and V (or some of them) split into heads."""
        B, T, C = t.shape
        # One view and one permute (not a split, then a view and a transpose of each part): fewer operators per layer.
        return t.view(B, T, n, self.n_head, C // (n * self.n_head)).permute(2, 0, 3, 1, 4).unbind(0)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Heads (B, nh, Tq, hs), keys and values (B, nh, T, hs) -> (B, Tq, H): the heads' attention, concatenated."""
        B, nh, Tq, hs = q.shape
        y = attention(q, k, v, bias, self.attn_dropout if self.training else 0.0)  # (B, nh, Tq, hs)
        return y.transpose(1, 2).reshape(B, Tq, nh * hs)


class FeedForward(nn.Module):
    """Position-wise feed-forward: H -> intermediate -> H."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.fc2, self.act(linear(self.fc1, x)))


class EncoderLayer(nn.Module):
    """One post-LN Transformer encoder layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None,
        unpadded: Unpadded | None = None,
        read: ReadTokens | None = None,
    ) -> torch.Tensor:
        """(B, T, H), or unpadded (R, H) -> the same shape. With `read`, the output at the tokens read alone, (K',
        H): every token is still a key and value of attention, but only these rows go on through the output
        projection and the feed-forward."""
        y = self.attn(x, attn_bias, unpadded, read)
        if read is not None:
            x = read.select(x)  # (K', H)
        x = self.ln1(x + self.dropout(y))
        x = self.ln2(x + self.dropout(self.ffn(x)))
        return x


class Pooler(nn.Module):
    """tanh(W h + b) of the [CLS] token: the sentence vector that NSP and sentence classification read.

    A causal (is_decoder) model reads the last real token instead: [CLS] has seen only itself there.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.last_token = config.is_decoder

    def positions(self, attention_mask: torch.Tensor | None, B: int, T: int, device: torch.device) -> torch.Tensor:
        """(B,) the position of the token each sequence's vector is read from."""
        if not self.last_token:
            return torch.zeros(B, dtype=torch.long, device=device)
        last = (attention_mask.sum(1) - 1) if attention_mask is not None else torch.full((B,), T - 1)
        return last.to(device=device, dtype=torch.long)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.last_token:
            B, T = h.shape[:2]
            read = h[torch.arange(B, device=h.device), self.positions(attention_mask, B, T, h.device)]  # (B, H)
        else:
            read = h[:, 0]  # (B, H)
        return torch.tanh(linear(self.dense, read))  # (B, H)


def is_padded(attention_mask: torch.Tensor | None) -> bool:
    """Whether any position is padding (a host sync: call it once per forward)."""
    return attention_mask is not None and not bool(attention_mask.all())


# Small inference batches (fewer tokens than this, batch x length) may run on one intra-op thread. Each operator
# of such a batch is a few microseconds of arithmetic and every split across threads waits for all of them: on an
# idle machine that wait is short and all threads are faster, but when the cores are busy elsewhere (other
# processes, another runtime's thread pool) each of the ~100 operators of a forward waits for a scheduler time
# slice, and one thread is many times faster. `ThreadChoice` times both and runs the faster.
SERIAL_TOKENS = 128

# Inference batches of fewer tokens than this (batch x length), without autograd, run their matrix products in
# oneDNN over weights packed once (`linear`). Larger ones keep PyTorch's own product: the packing's gain shrinks as
# rows grow, and each new row count would compile oneDNN kernels.
PACKED_TOKENS = 128

# With `BertModel.bf16_from_tokens` set, inference batches of at least this many tokens run in bfloat16 (`bertkit
# serve --precision bf16`). bf16 pays for itself on large batches only: each operator converts its inputs, a fixed
# cost that outweighs the faster arithmetic on a few short sentences (the MiniLM encoder's time per SST-2 sentence
# by batch size: benchmarks/results/model_batch_cost_cpu.json, written by benchmarks/model_batch_cost.py).
BF16_FROM_TOKENS = 128


def attention_bias(
    padding_mask: torch.Tensor | None,
    dtype: torch.dtype,
    causal: bool = False,
    T: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """(B, T) 1/0 padding mask (None when nothing is padded) -> additive bias for SDPA: (B, 1, 1, T), or
    (B, 1, T, T) when `causal` (each token sees itself and the tokens before it); None when nothing is masked."""
    if padding_mask is None and not causal:
        return None
    keep = padding_mask[:, None, None, :].bool() if padding_mask is not None else None  # (B, 1, 1, T)
    if causal:
        lower = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]  # (1, 1, T, T)
        keep = lower if keep is None else keep & lower
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def _what(value: object) -> str:
    """A tensor's shape, or what else `value` is, for a message that refuses it."""
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _check_integers(name: str, t: torch.Tensor) -> None:
    """Refuse a tensor of ids, labels or positions that does not hold integers."""
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise BertkitError(f"{name} must hold integers (torch.long), got {t.dtype}")


def check_inputs(
    config: BertConfig,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
) -> None:
    """Refuse inputs the encoder would read wrongly or fail on deep inside torch: not (B, T) integer tensors of one
    shape, no tokens, ids outside the vocabulary or segments outside `type_vocab_size` (a tokenizer of another
    model). The value checks run on the CPU only: elsewhere they would wait for the device at every call."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        got = _what(input_ids)
        raise BertkitError(f"input_ids must be a (batch, tokens) tensor, got {got} (Tokenizer.batch makes one)")
    if input_ids.shape[1] == 0:
        raise BertkitError(f"input_ids of shape {tuple(input_ids.shape)} holds no tokens: encode at least one text")
    named = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.shape != input_ids.shape:
            raise BertkitError(f"{name} must have input_ids' shape {tuple(input_ids.shape)}, got {_what(t)}")
        if name != "attention_mask":  # a mask may be float or bool, as transformers takes it
            _check_integers(name, t)
    if input_ids.device.type != "cpu":
        return
    for name, t, size in (("input_ids", input_ids, config.vocab_size),
                          ("token_type_ids", token_type_ids, config.type_vocab_size)):  # fmt: skip
        if t is None or not t.numel():
            continue
        low, high = (int(v) for v in torch.aminmax(t))
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            whose = "vocabulary" if name == "input_ids" else "segment types (type_vocab_size)"
            raise BertkitError(f"{name} holds {bad}, outside this model's {size} {whose}: encode with the model's "
                               "own tokenizer")  # fmt: skip


def check_positions(name: str, positions: torch.Tensor, inputs: torch.Tensor) -> None:
    """Refuse a mask of positions that is not a bool tensor of the shape of `inputs`, on their device."""
    shape = tuple(inputs.shape)
    if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != shape or positions.dtype != torch.bool:
        what = _what(positions) + (f" of {positions.dtype}" if isinstance(positions, torch.Tensor) else "")
        raise BertkitError(f"{name} must be a bool tensor of shape {shape}, got {what}")
    if positions.device != inputs.device:
        raise BertkitError(f"{name} is on {positions.device} and input_ids on {inputs.device}: put both on one")


def check_targets(name: str, targets: torch.Tensor, shape: tuple, integer: bool = False) -> None:
    """Refuse `targets` (a regression's values, a multi-label row of 0/1, QA's token positions: `integer`) not of
    `shape`: one of (B, 1) for (B,) was broadcast to (B, B) by a regression's loss, with a warning at most."""
    if _exporting():
        return
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != shape:
        raise BertkitError(f"{name} must have shape {shape}, got {_what(targets)}")
    if integer:
        _check_integers(name, targets)


def check_labels(name: str, labels: torch.Tensor, shape: tuple, classes: int, ignored: int | None = None) -> None:
    """Refuse `labels` that are not integers of `shape` in [0, classes) (or `ignored`); the values on the CPU only,
    as in `check_inputs`, and nothing while a graph is exported (its shapes are symbols there)."""
    if _exporting():
        return
    check_targets(name, labels, shape, integer=True)
    if labels.device.type != "cpu" or not labels.numel():
        return
    bad = (labels < 0) | (labels >= classes)
    if ignored is not None:
        bad &= labels != ignored
    if bad.any():
        value = int(labels[bad][0])
        also = f" (or {ignored} where nothing is predicted)" if ignored is not None else ""
        raise BertkitError(f"{name} holds {value}: labels run from 0 to {classes - 1}{also}")


@dataclass
class BertOutput:
    """BertModel's output: per-token hidden states and the pooled sentence vector (None without a pooler)."""

    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor | None  # (B, H)


@dataclass
class PreTrainingOutput:
    """BertForPreTraining's output: total, MLM and NSP losses (None without labels) and both logits."""

    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    mlm_logits: torch.Tensor  # (B, T, V); (P, V) at the labelled positions, or at outputs_at's
    nsp_logits: torch.Tensor  # (B, 2)


M = TypeVar("M", bound="PreTrainedMixin")


class PreTrainedMixin:
    """`from_pretrained` / `save_pretrained` in the Hugging Face model-directory layout."""

    config: BertConfig
    hf_architecture: str = ""

    @classmethod
    def from_pretrained(cls: type[M], path: str | Path, **kwargs) -> M:
        """Load a model directory (bertkit's or Hugging Face's), in eval mode. Weights the directory does not hold
        (the heads of an encoder-only checkpoint, a new task head) start at random and are listed in the model's
        `fresh_parameters`: check it before trusting a head's outputs (`bertkit.tasks.model_dir.open_model_dir`
        opens a directory as what it holds). See `bertkit.checkpoint.load_model`; `kwargs` go to the class."""
        from bertkit.checkpoint import load_model

        return load_model(cls, path, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        """Write `config.json` and `model.safetensors` with Hugging Face parameter names."""
        from bertkit.checkpoint import save_model

        save_model(self, path)  # type: ignore[arg-type]


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: N(0, std) for weights, zero biases, identity LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertModel(nn.Module, PreTrainedMixin):
    """The BERT encoder: embeddings, a stack of encoder layers and the pooler."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config) if add_pooler else None
        # Skip padded positions (same results on real tokens; zeros at padding), and in the last layer the positions
        # not read (`outputs_at`). False: the plain path, every position computed as transformers does.
        self.unpad = True
        self.serial_below_tokens = SERIAL_TOKENS  # smaller inference batches may run on one thread; 0: never
        # Smaller inference batches without autograd run their products over packed weights (`linear`); 0: never.
        self.packed_below_tokens = PACKED_TOKENS
        # True: keep only each layer's input while training and compute its activations again in the backward pass
        # (memory for a layer's activations instead of all of them, for a second forward pass; README gives the cost)
        self.gradient_checkpointing = False
        self.threads = ThreadChoice()
        # An int: inference batches of at least that many tokens (batch x length) run under bfloat16 autocast, for
        # CPUs with native bf16 (AVX512-BF16, AMX) and GPUs; outputs stay float32. None: float32 throughout.
        self.bf16_from_tokens: int | None = None
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        outputs_at: torch.Tensor | None = None,
    ) -> BertOutput:
        """Encode a batch: `input_ids` (B, T) token ids, `token_type_ids` (B, T) segments (0 for text A, 1 for B;
        default all 0), `attention_mask` (B, T) 1 for a real token and 0 for padding (default: no padding), as
        `Tokenizer.batch` returns them. Hidden states at padded positions are zeros.

        `outputs_at` (B, T) bool: the positions whose hidden state the caller reads (the pooler's own are added).
        The last layer then computes those tokens' rows alone past the keys and values (`ReadTokens`): the hidden
        states there are what they would be otherwise, up to rounding, and zeros elsewhere. The plain path
        (`unpad` False) and an exported graph ignore it."""
        # An exported graph (ONNX, torch.export) must serve every input: it always applies the mask, never unpads.
        exporting = _exporting()
        if not exporting:
            check_inputs(self.config, input_ids, token_type_ids, attention_mask)
            if outputs_at is not None:
                check_positions("outputs_at", outputs_at, input_ids)
        T = input_ids.shape[1]
        if self.config.max_position_embeddings < T:
            raise BertkitError(
                f"sequence of {T} tokens is longer than the model's {self.config.max_position_embeddings} "
                "positions; truncate the input (max_length)"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        inference = not self.training and not exporting
        small = (  # on a GPU the CPU threads only launch kernels: nothing to choose
            inference
            and input_ids.device.type == "cpu"
            and input_ids.numel() < self.serial_below_tokens
            and torch.get_num_threads() > 1
        )
        bf16 = inference and self.bf16_from_tokens is not None and input_ids.numel() >= self.bf16_from_tokens
        packed = (
            inference
            and not torch.compiler.is_compiling()
            and not torch.is_grad_enabled()
            and input_ids.numel() < self.packed_below_tokens
            and self.embeddings.word_embeddings.weight.dtype == torch.float32
            and not torch.is_autocast_enabled(input_ids.device.type)
            and packed_products_available(input_ids.device)
        )
        if exporting or not self.unpad:
            outputs_at = None
        with packed_products() if packed else nullcontext():
            if not small:
                return self._encode(input_ids, token_type_ids, attention_mask, outputs_at, exporting, bf16)
            tokens = input_ids.numel()
            serial = self.threads.serial(tokens, time.monotonic())
            start = time.perf_counter()
            with one_intra_op_thread() if serial else nullcontext():
                out = self._encode(input_ids, token_type_ids, attention_mask, outputs_at, exporting, bf16)
            self.threads.record(tokens, serial, time.perf_counter() - start)
            return out

    def _encode(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        outputs_at: torch.Tensor | None,
        exporting: bool,
        bf16: bool = False,
    ) -> BertOutput:
        if bf16:
            with torch.autocast(input_ids.device.type, dtype=torch.bfloat16):
                out = self._encode(input_ids, token_type_ids, attention_mask, outputs_at, exporting)
            # The heads read float32, as they would without bf16: their own products stay exact enough.
            pooled = out.pooler_output.float() if out.pooler_output is not None else None
            return BertOutput(last_hidden_state=out.last_hidden_state.float(), pooler_output=pooled)
        B, T = input_ids.shape
        dtype = self.embeddings.word_embeddings.weight.dtype
        padded = attention_mask is not None if exporting else is_padded(attention_mask)
        causal = self.config.is_decoder
        if outputs_at is not None and self.pooler is not None:
            outputs_at = outputs_at.clone()
            read = self.pooler.positions(attention_mask, B, T, outputs_at.device)  # (B,)
            outputs_at[torch.arange(B, device=outputs_at.device), read] = True
        last = len(self.layers) - 1
        if padded and self.unpad and not exporting:
            # No work on padding: embeddings, projections, FFN, LayerNorm and dropout see the N real tokens only,
            # and attention runs over groups of sequences of similar length (each group's own bias).
            unpadded = Unpadded(
                attention_mask,
                rounds_rows(input_ids.device),
                n_head=self.config.num_attention_heads,
                causal=causal,
                bias_dtype=dtype,
            )
            ids, types = unpadded.unpad(input_ids), unpadded.unpad(token_type_ids)
            read = ReadTokens(outputs_at, unpadded) if outputs_at is not None else None
            x = self.embeddings(ids, types, unpadded.positions)  # (N, H), or (R, H)
            for i, layer in enumerate(self.layers):
                x = self._layer(layer, x, None, unpadded, read if i == last else None)  # the last: (K', H)
            x = unpadded.pad(x) if read is None else read.pad(x)  # (B, T, H), zeros at padding and where not read
        else:
            bias = attention_bias(attention_mask if padded else None, dtype, causal, T, input_ids.device)
            read = ReadTokens(outputs_at, None, rounds_rows(input_ids.device)) if outputs_at is not None else None
            x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
            for i, layer in enumerate(self.layers):
                x = self._layer(layer, x, bias, None, read if i == last else None)  # the last: (K, H)
            if read is not None:
                x = read.pad(x)  # (B, T, H)
        pooled = self.pooler(x, attention_mask) if self.pooler is not None else None
        return BertOutput(last_hidden_state=x, pooler_output=pooled)

    def _layer(
        self,
        layer: EncoderLayer,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        unpadded: Unpadded | None = None,
        read: ReadTokens | None = None,
    ) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The random state is restored for the recomputation, so dropout drops the same units: equal gradients.
            return torch.utils.checkpoint.checkpoint(layer, x, bias, unpadded, read, use_reentrant=False)
        return layer(x, bias, unpadded, read)


class MaskedLMHead(nn.Module):
    """transform (dense + act + LayerNorm) then a decoder that shares its weight with the word embeddings."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.word_embeddings = word_embeddings  # tied: the decoder weight is this embedding matrix
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.act(self.transform(h)))
        return F.linear(h, self.word_embeddings.weight, self.bias)  # (..., V)


class _CrossEntropyKeepingSoftmax(torch.autograd.Function):
    """Mean cross-entropy of (P, V) logits against (P,) targets (see `cross_entropy`).

    The forward pass computes each row's softmax in one fused pass and keeps it: it is the gradient up to the
    target's 1 and the scale, so the backward pass scales it in place instead of computing every exponential
    again. A row's loss is minus the log of its target's probability; where that probability is too small to
    carry float32's precision (its logit far below the row's largest), the loss is computed from the logits
    instead (logsumexp minus the target's logit). Runs once per forward pass (`retain_graph` is refused, not
    answered wrongly)."""

    SMALLEST = 1e-30  # a probability below it is computed from the logits

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        probs = torch.softmax(logits, 1)  # (P, V)
        picked = probs.gather(1, targets[:, None]).squeeze(1)  # (P,) each target's probability
        nll = picked.log().neg_()
        far = (picked < _CrossEntropyKeepingSoftmax.SMALLEST).nonzero()[:, 0]  # (rows,) usually none
        if len(far):
            nll[far] = torch.logsumexp(logits[far], 1) - logits[far, targets[far]]
        ctx.save_for_backward(probs, targets)
        ctx.used = False
        return nll.mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        if ctx.used:
            raise BertkitError("the masked-LM loss's backward pass reuses its forward's memory: run it once per "
                               "forward pass (without retain_graph)")  # fmt: skip
        ctx.used = True
        probs, targets = ctx.saved_tensors
        scale = grad_loss / probs.shape[0]
        grad = probs.mul_(scale)  # (softmax - onehot) * scale
        grad[torch.arange(len(targets)), targets] -= scale
        return grad, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy's mean over (P, V) float32 logits and (P,) targets (none ignored).

    On the CPU, F.cross_entropy writes the P x V log-probabilities, then its backward fills a P x V zero gradient
    and reads them all again: with a vocabulary-sized V each pass over memory costs (their operators in
    benchmarks/results/pretrain_profile_cpu.json). Here the softmax is computed once, by PyTorch's fused kernel,
    and becomes the gradient in place. Elsewhere, F.cross_entropy."""
    if logits.device.type != "cpu":
        return F.cross_entropy(logits, targets)
    return _CrossEntropyKeepingSoftmax.apply(logits, targets)


class BertForPreTraining(nn.Module, PreTrainedMixin):
    """BERT with its two pre-training heads: loss = mlm_weight * MLM + nsp_weight * NSP."""

    hf_architecture = "BertForPreTraining"

    def __init__(self, config: BertConfig, mlm_weight: float = 1.0, nsp_weight: float = 1.0):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm = MaskedLMHead(config, self.bert.embeddings.word_embeddings)
        self.nsp = nn.Linear(config.hidden_size, 2)
        self.mlm_weight = mlm_weight
        self.nsp_weight = nsp_weight
        for m in (self.mlm.transform, self.mlm.ln, self.nsp):
            init_weights(m, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        nsp_labels: torch.Tensor | None = None,
        outputs_at: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        """The encoder's inputs (see `BertModel.forward`), and optionally the labels that make the losses:
        `mlm_labels` (B, T) the original token id where a position is predicted, -100 elsewhere; `nsp_labels` (B,)
        0 when text B follows text A, 1 when it is a random text. With `mlm_labels`, or without labels `outputs_at`
        (B, T) bool, the positions whose predictions the caller reads (fill-mask's [MASK]s), the decoder runs on
        those positions alone, so `mlm_logits` is (P, V) for them, in row order; otherwise (B, T, V)."""
        chosen = None  # (B, T) the predicted positions: the encoder's last layer computes only there (and [CLS])
        if mlm_labels is not None:
            if outputs_at is not None:
                raise BertkitError("pass mlm_labels or outputs_at, not both: with labels, the labelled positions "
                                   "are those the decoder reads")  # fmt: skip
            check_inputs(self.config, input_ids, token_type_ids, attention_mask)  # the inputs before their labels
            check_labels("mlm_labels", mlm_labels, tuple(input_ids.shape), self.config.vocab_size, IGNORE_INDEX)
            chosen = mlm_labels != IGNORE_INDEX
        elif outputs_at is not None:  # checked by the encoder, before anything reads it
            chosen = outputs_at
        out = self.bert(input_ids, token_type_ids, attention_mask, outputs_at=chosen)
        if nsp_labels is not None:
            check_labels("nsp_labels", nsp_labels, tuple(input_ids.shape[:1]), 2)
        h = out.last_hidden_state  # (B, T, H)
        nsp_logits = self.nsp(out.pooler_output)  # (B, 2)
        mlm_loss = nsp_loss = loss = None
        if chosen is None:
            mlm_logits = self.mlm(h)  # (B, T, V)
        elif mlm_labels is None:
            mlm_logits = self.mlm(h[chosen])  # (P, V)
        else:
            # Only ~15% of positions are predicted: run the vocabulary-sized decoder on those alone.
            picked = h[chosen]  # (P, H)
            P = len(picked)
            if rounds_rows(h.device) and recurring_rows(P) > P:
                # Zero rows after the P picked (recurring shapes): their logits are dropped, their gradient is 0.
                mlm_logits = self.mlm(_with_zero_rows(picked, recurring_rows(P)))[:P]  # (P, V)
            else:  # no slice: its backward would fill a P x V zero gradient and copy the real one into it
                mlm_logits = self.mlm(picked)  # (P, V)
            targets = mlm_labels[chosen]  # (P,)
            mlm_loss = cross_entropy(mlm_logits.float(), targets) if targets.numel() else h.sum() * 0.0
            loss = self.mlm_weight * mlm_loss
        if nsp_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
            loss = self.nsp_weight * nsp_loss if loss is None else loss + self.nsp_weight * nsp_loss
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)


def set_bf16_from_tokens(model: nn.Module, tokens: int | None = BF16_FROM_TOKENS) -> None:
    """Run `model`'s inference batches of at least `tokens` tokens in bf16 (None: fp32 throughout), in every
    BertModel it holds (see `BertModel.bf16_from_tokens`)."""
    for module in model.modules():
        if isinstance(module, BertModel):
            module.bf16_from_tokens = tokens


def set_dropout(model: nn.Module, p: float) -> None:
    """Run `model` with dropout `p` everywhere (hidden states and attention probabilities), config untouched.

    Pre-training without dropout is a setting of the run, not of the architecture: the config keeps its own
    dropout, so the saved model fine-tunes with it (BERT's 0.1) unless told otherwise."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif isinstance(module, SelfAttention):
            module.attn_dropout = p


# ---------------------------------------------------------------------------------------------- task models
@dataclass
class TaskOutput:
    """A task model's output: the loss (None without labels) and the logits."""

    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, C) sequence | (B, T, C) tokens | (B, T, 2) start/end


def num_labels_of(config: BertConfig, num_labels: int | None) -> int:
    """`num_labels` when given, else the size of the config's `id2label`, else 2."""
    if num_labels is not None:
        return num_labels
    id2label = config.extra.get("id2label")
    return len(id2label) if id2label else 2  # transformers' default when config.json names no labels


class BertForSequenceClassification(nn.Module, PreTrainedMixin):
    """Pooled [CLS] -> dropout -> linear. The loss follows config.json's `problem_type`, as in transformers:
    cross-entropy (single-label), binary cross-entropy per label ("multi_label_classification") or MSE
    ("regression", the default for one output)."""

    hf_architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig, num_labels: int | None = None):
        super().__init__()
        self.config = config
        self.num_labels = num_labels_of(config, num_labels)
        if self.num_labels == 1 and config.extra.get("problem_type") != "regression":
            # Said in config.json, so that transformers loads it as what it computes: MSE on one output. In a copy:
            # a classifier built later from the caller's config would compute MSE too.
            config = replace(config, extra={**config.extra, "problem_type": "regression"})
            self.config = config
        self.problem_type = config.extra.get("problem_type") or "single_label_classification"
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        """(B, T) inputs -> (B, C) logits; with (B,) labels (class ids, or values for a regression; (B, C) 0/1 for
        multi-label), the loss."""
        # Only the pooler's token is read: the last layer computes that row alone (see BertModel.forward).
        read_none = torch.zeros_like(input_ids, dtype=torch.bool) if isinstance(input_ids, torch.Tensor) else None
        pooled = self.bert(input_ids, token_type_ids, attention_mask, outputs_at=read_none).pooler_output  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        loss = None
        if labels is not None:
            if self.problem_type == "regression":
                if self.num_labels == 1 and isinstance(labels, torch.Tensor) and labels.shape[1:] == (1,):
                    labels = labels[:, 0]  # (B, 1) as transformers takes it; it was broadcast against (B,) to (B, B)
                values = logits.shape[:1] if self.num_labels == 1 else logits.shape  # (B,), or (B, C)
                check_targets("labels", labels, tuple(values))
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            elif self.problem_type == "multi_label_classification":
                check_targets("labels", labels, tuple(logits.shape))
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
            else:
                check_labels("labels", labels, tuple(input_ids.shape[:1]), self.num_labels)
                loss = F.cross_entropy(logits.float(), labels)
        return TaskOutput(loss, logits)


class BertForTokenClassification(nn.Module, PreTrainedMixin):
    """A label per token: hidden state -> dropout -> linear; positions labelled IGNORE_INDEX carry no loss.

    With `"crf": true` in config.json the logits are a CRF's emission scores: the loss is the CRF's negative
    log-likelihood of the labelled positions' tag sequence, and `crf.decode` reads the best valid sequence. The
    CRF's parameters are saved as crf.* beside the encoder, so transformers' token classifier still loads the
    directory (it reports crf.* as unused) and computes the same logits."""

    hf_architecture = "BertForTokenClassification"

    def __init__(self, config: BertConfig, num_labels: int | None = None):
        super().__init__()
        self.config = config
        self.num_labels = num_labels_of(config, num_labels)
        self.bert = BertModel(config, add_pooler=False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        init_weights(self.classifier, config.initializer_range)
        self.crf = None
        if config.extra.get("crf"):
            id2label = config.extra.get("id2label") or {}
            labels = [id2label.get(str(i)) for i in range(self.num_labels)]
            if None in labels:
                raise BertkitError("a CRF needs the tag names (config.json's id2label) for its valid transitions")
            self.crf = CRF(self.num_labels, allowed_transitions(labels))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TaskOutput:
        """(B, T) inputs -> (B, T, C) logits; with (B, T) tag ids (IGNORE_INDEX where none), the loss."""
        h = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, H)
        if labels is not None:
            check_labels("labels", labels, tuple(input_ids.shape), self.num_labels, IGNORE_INDEX)
        logits = self.classifier(self.dropout(h))  # (B, T, C)
        loss = None
        if labels is not None and self.crf is not None:
            loss = self.crf(logits, labels, labels != IGNORE_INDEX)  # the chain: the labelled positions, in order
        elif labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return TaskOutput(loss, logits)


class BertForQuestionAnswering(nn.Module, PreTrainedMixin):
    """Extractive QA: a start vector and an end vector score every token; loss = mean of the two CEs."""

    hf_architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig, num_labels: int | None = None):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooler=False)
        # The reference's start/end softmax runs over every position, padding included, so padded positions must be
        # computed as it computes them (the plain path): the unpadded path would leave them zero and change the loss.
        self.bert.unpad = False
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        init_weights(self.qa_outputs, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> TaskOutput:
        """(B, T) inputs -> (B, T, 2) start and end logits; with (B,) start and end positions, the loss."""
        h = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # (B, T, H)
        logits = self.qa_outputs(h)  # (B, T, 2)
        loss = None
        if start_positions is not None and end_positions is not None:
            check_targets("start_positions", start_positions, tuple(input_ids.shape[:1]), integer=True)
            check_targets("end_positions", end_positions, tuple(input_ids.shape[:1]), integer=True)
            T = logits.shape[1]
            # Positions outside the sequence carry no loss (as in the reference implementation).
            start, end = start_positions.clamp(0, T), end_positions.clamp(0, T)
            start_loss = F.cross_entropy(logits[..., 0].float(), start, ignore_index=T)
            end_loss = F.cross_entropy(logits[..., 1].float(), end, ignore_index=T)
            loss = (start_loss + end_loss) / 2
        return TaskOutput(loss, logits)


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder layers inside `model`: the units FSDP shards one by one (the embeddings and heads are the last
    unit), so that only one layer's full parameters are gathered at a time."""
    return [m for m in model.modules() if isinstance(m, EncoderLayer)]
