"""Whether `torch.compile` speeds up a CPU pre-training step: bertkit's eager step against the same step with each
encoder layer compiled by inductor, with and without dropout.

    python benchmarks/pretrain_compile.py [--presets mini] [--vocab 21128] [--steps 12]

The step is `benchmarks/throughput.py`'s (batch 32, real lengths 64-128 padded to 128, 15% predicted, fused AdamW),
on the unpadded path, whose token count changes with every batch: the layers are compiled with dynamic shapes
(`torch.compile(dynamic=True)`), so three batches of different lengths, cycled, reuse one graph. bertkit's own
dropout draws its mask with an in-place `random_`, which the compiler cannot trace, so compiled layers use
`F.dropout` instead (inductor generates its own random numbers); with dropout 0 both sides run the same operators.
Freed memory is kept for reuse, as the trainer has it. Reported per preset and dropout: the median step seconds of
each side (alternating blocks of steps, after warm-up and compilation), compiled / eager, and the compilation's
seconds. Writes benchmarks/results/pretrain_compile_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import RESULTS, write_result
from throughput import pretraining_batch

import bertkit.model
from bertkit import BertConfig, BertForPreTraining
from bertkit.machine import keep_freed_memory
from bertkit.train.optim import build_optimizer


def traceable_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """bertkit's dropout outside compiled code; F.dropout inside it (the compiler cannot trace `random_`)."""
    if torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    return eager_dropout(x, p, training)


eager_dropout = bertkit.model.dropout


def measure(preset: str, vocab: int, dropout: float, steps: int) -> dict:
    cfg = BertConfig.preset(preset, vocab_size=vocab, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    batches = [pretraining_batch(32, 128, vocab, seed=s) for s in range(3)]
    sides = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        model = BertForPreTraining(cfg).train()
        started = time.perf_counter()
        if name == "compiled":
            for layer in model.bert.layers:
                layer.forward = torch.compile(layer.forward, dynamic=True)
        optimizer = build_optimizer(model, 1e-4, device=torch.device("cpu"), fused=True)

        def step(n: int, model=model, optimizer=optimizer) -> None:
            batch, labels, nsp, _, _ = batches[n % len(batches)]
            model(**batch, mlm_labels=labels, nsp_labels=nsp).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for n in range(2 * len(batches)):  # warm-up; compiles the graph (and its backward) on the first batches
            step(n)
        sides[name] = {"step": step, "warmup_s": time.perf_counter() - started, "times": []}
    for block in range(4):  # alternating blocks: a slow spell of the machine hits both
        for side in sides.values():
            for n in range(steps // 4):
                start = time.perf_counter()
                side["step"](n + block)
                side["times"].append(time.perf_counter() - start)
    eager, compiled = (statistics.median(sides[k]["times"]) for k in ("eager", "compiled"))
    return {
        "preset": preset,
        "vocab_size": vocab,
        "dropout": dropout,
        "eager_step_s": round(eager, 4),
        "compiled_step_s": round(compiled, 4),
        "compiled_over_eager": round(compiled / eager, 3),
        "warmup_s": {k: round(v["warmup_s"], 1) for k, v in sides.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="mini")
    ap.add_argument("--vocab", type=int, default=21128)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per side (in four alternating blocks)")
    args = ap.parse_args()
    bertkit.model.dropout = traceable_dropout  # the layers call the module's `dropout` by name
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                     "freed_memory_kept": keep_freed_memory(), "runs": []}  # fmt: skip
    for preset in args.presets.split(","):
        for dropout in (0.1, 0.0):
            r = measure(preset, args.vocab, dropout, args.steps)
            results["runs"].append(r)
            print(f"{preset}, dropout {dropout}: eager {r['eager_step_s']} s/step, compiled {r['compiled_step_s']} "
                  f"({r['compiled_over_eager']}x); warm-up {r['warmup_s']}", flush=True)  # fmt: skip
    print(f"wrote {write_result(RESULTS / 'pretrain_compile_cpu.json', results)}")


if __name__ == "__main__":
    main()
