"""Model FLOPs and the machine's matmul peak: the one count that model FLOPs utilisation (MFU) is reported with.

The count is of useful work only, as in the PaLM paper's MFU: the real (not padded) tokens, the masked-LM decoder
on the predicted tokens alone (the other positions' vocabulary logits are never computed by the unpadded path, and
would be wasted work in any implementation), and in the encoder's last layer everything but the keys and values
for the tokens whose output is read alone (the predicted ones and each sequence's [CLS]). A backward pass costs
twice its forward.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from bertkit.config import BertConfig


def encoder_flops(config: BertConfig, lengths: Sequence[int], read: Sequence[int] | None = None) -> float:
    """Forward FLOPs of the encoder over sequences of these real lengths: per layer the Q/K/V/output projections
    and the feed-forward (2 FLOPs per multiply-add over each token), and the two attention products (n x n x H
    each per sequence). With `read` (per sequence, how many tokens' output is read: `BertModel.forward`'s
    `outputs_at`), the last layer's query projection, attention, output projection and feed-forward count over
    those tokens only, its keys and values over all."""
    H, inner, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    total = 0.0
    for n, r in zip(lengths, lengths if read is None else read, strict=True):
        layer = 2 * n * (4 * H * H + 2 * H * inner) + 4 * n * n * H
        last = 2 * n * 2 * H * H + 2 * r * (2 * H * H + 2 * H * inner) + 4 * r * n * H
        total += (L - 1) * layer + last
    return total


def pretraining_flops(config: BertConfig, lengths: Sequence[int], predicted: Sequence[int]) -> float:
    """Forward + backward FLOPs of one pre-training step: the encoder over the real tokens (its last layer past the
    keys and values over the `predicted` tokens and [CLS] of each sequence), the pooler and NSP head per sequence,
    the MLM transform and decoder over the predicted tokens."""
    H, V = config.hidden_size, config.vocab_size
    read = [min(p + 1, n) for n, p in zip(lengths, predicted, strict=True)]  # [CLS] is read by the pooler
    forward = encoder_flops(config, lengths, read)
    forward += len(lengths) * (2 * H * H + 2 * H * 2)  # pooler + NSP
    forward += sum(predicted) * (2 * H * H + 2 * H * V)  # MLM transform + decoder
    return 3 * forward


def matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 12) -> float:
    """The dense matmul rate this machine reaches now, in FLOP/s: the median of repeated square products (2,048 on
    a CPU, 8,192 on a GPU), the first two left out as warm-up. MFU divides by it, measured in the same run.

    A GPU runs `repeats` x 5 products (with the first fifth left out), ~0.1 s of bf16 work on a recent one: a few
    milliseconds would not bring its clocks up, and a low peak would flatter MFU."""
    device = torch.device(device)
    n = 2048 if device.type == "cpu" else 8192
    if device.type != "cpu":
        repeats *= 5
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times[max(2, repeats // 5) :])
