"""The FLOP count that MFU is reported with, against torch's own FLOP counter on the model's forward pass."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bertkit import BertConfig
from bertkit.flops import encoder_flops, matmul_peak, pretraining_flops
from bertkit.model import BertForPreTraining, BertModel


def counted(fn) -> int:
    """torch's count of the matmul FLOPs of `fn()`; attention by the math kernel (two matmuls it can see: the
    fused CPU kernel is not counted by FlopCounterMode). The models here run small batches with their
    `packed_below_tokens` at 0: FlopCounterMode counts PyTorch's products, not oneDNN's over packed weights."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def test_encoder_flops_equal_torchs_count_of_the_forward_pass() -> None:
    config = BertConfig.preset("tiny", vocab_size=500)
    model = BertModel(config, add_pooler=False).eval()
    model.packed_below_tokens = 0
    for n in (1, 7, 40):  # one sequence: no padding, every token real
        ids = torch.randint(5, 500, (1, n))
        with torch.no_grad():
            assert counted(lambda ids=ids: model(ids)) == encoder_flops(config, [n])


def test_pretraining_flops_count_the_decoder_and_the_last_layer_on_predicted_tokens_only() -> None:
    """Two sequences of 32 real tokens padded to 40 (the unpadded path: one attention group, no slot of padding),
    3 predicted in each: torch counts what the formula counts, so the last layer's queries and everything after
    attention run for the 4 read tokens of each sequence (3 predicted and [CLS]), and the decoder for the 6."""
    config = BertConfig.preset("tiny", vocab_size=500)
    model = BertForPreTraining(config).eval()
    model.bert.packed_below_tokens = 0
    ids = torch.randint(5, 500, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[:, 32:] = 0
    labels = torch.full((2, 40), -100)
    labels[0, [3, 9, 17]] = ids[0, [3, 9, 17]]
    labels[1, [1, 20, 31]] = ids[1, [1, 20, 31]]
    with torch.no_grad():
        forward = counted(lambda: model(ids, attention_mask=mask, mlm_labels=labels, nsp_labels=torch.tensor([0, 1])))
    assert forward == pretraining_flops(config, [32, 32], [3, 3]) / 3  # a backward pass is twice its forward
    one = torch.randint(5, 500, (1, 30))
    everything = counted(lambda: model(one))  # no labels: every position through the last layer and the decoder
    H, V = config.hidden_size, config.vocab_size
    heads = 2 * H * H + 2 * H * 2  # pooler + NSP
    assert everything == encoder_flops(config, [30]) + heads + 30 * (2 * H * H + 2 * H * V)
    assert encoder_flops(config, [30], read=[30]) == encoder_flops(config, [30])


def test_matmul_peak_is_a_plausible_rate() -> None:
    assert 1e8 < matmul_peak(repeats=4) < 1e14
