"""Where a CPU pre-training step's time goes: bertkit's step under torch.profiler, operators grouped by kind.

    python benchmarks/pretrain_profile.py [--presets tiny,mini,small] [--vocab 21128] [--steps 3]

The step is `benchmarks/throughput.py`'s (batch 32, real lengths 64-128 padded to 128, 15% predicted, fused AdamW,
dropout 0.1 as in BERT), profiled for `--steps` steps after six warm-up steps. Reported per preset: the step's
median seconds, each operator's share of the profiled CPU time (the top 15), and the shares by kind: matrix
products, dropout's random numbers, the optimizer, data movement (copies, gathers and scatters, fills), and the
rest. The matrix products' share bounds MFU: the step cannot use more of the matmul peak than that share times the
rate its products themselves reach, also reported: the step's model FLOPs (`bertkit.flops`) over the products' own
time, as a fraction of the fp32 matmul peak measured in the run (MFU = that rate x that share). Freed
memory is kept for reuse, as bertkit's trainer has it on the CPU (`bertkit.machine.keep_freed_memory`): otherwise
the page faults of large blocks mapped afresh each step would be counted in the operators that first touch them.
Writes benchmarks/results/pretrain_profile_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import RESULTS, write_result
from throughput import pretraining_batch
from torch.profiler import ProfilerActivity, profile

from bertkit import BertConfig, BertForPreTraining
from bertkit.flops import matmul_peak, pretraining_flops
from bertkit.machine import keep_freed_memory
from bertkit.train.optim import build_optimizer

KINDS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "dropout random numbers": ("aten::bernoulli_", "aten::random_"),  # F.dropout's, bertkit.model.dropout's
    "optimizer": ("aten::_fused_adamw_",),
    "data movement": ("aten::copy_", "aten::index_select", "aten::index_copy", "aten::index_add_", "aten::fill_",
                      "aten::cat", "aten::scatter_add_", "aten::embedding_dense_backward", "aten::zero_"),
}  # fmt: skip


def profile_step(preset: str, vocab: int, steps: int, peak: float) -> dict:
    cfg = BertConfig.preset(preset, vocab_size=vocab)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).train()
    optimizer = build_optimizer(model, 1e-4, device=torch.device("cpu"), fused=True)
    batch, labels, nsp, lengths, predicted = pretraining_batch(32, 128, vocab)

    def step() -> None:
        model(**batch, mlm_labels=labels, nsp_labels=nsp).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(6):  # warm-up: optimizer state, and the heap's layout settles
        step()
    seconds = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    # Self time of the operators (aten::*): each microsecond counted once, in the operator that spent it.
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")}
    total = sum(ops.values())
    shares = {k: v / total for k, v in sorted(ops.items(), key=lambda kv: -kv[1])}
    by_kind = {kind: sum(shares.get(op, 0.0) for op in names) for kind, names in KINDS.items()}
    by_kind["the rest"] = 1.0 - sum(by_kind.values())
    flops = pretraining_flops(cfg, lengths, predicted)
    matmul_s = sum(ops.get(op, 0) for op in KINDS["matrix products"]) / 1e6 / steps  # profiler times are in us
    operators_s = total / 1e6 / steps
    return {
        "preset": preset,
        "vocab_size": vocab,
        "real_tokens_per_batch": sum(lengths),
        "step_s_median": statistics.median(seconds),
        "share_by_kind": {k: round(v, 4) for k, v in by_kind.items()},
        "matrix_products_rate_of_peak": round(flops / matmul_s / peak, 4),
        "mfu_of_profiled_operator_time": round(flops / operators_s / peak, 4),
        "top_operators": {k: round(v, 4) for k, v in list(shares.items())[:15]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,mini,small")
    ap.add_argument("--vocab", type=int, default=21128)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    kept = keep_freed_memory()
    peak = max(matmul_peak() for _ in range(3))
    results: dict = {"threads": torch.get_num_threads(), "freed_memory_kept": kept, "fp32_matmul_peak_gflops":
                     round(peak / 1e9, 1), "profiles": {}}  # fmt: skip
    for preset in args.presets.split(","):
        r = profile_step(preset, args.vocab, args.steps, peak)
        results["profiles"][preset] = r
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in r["share_by_kind"].items())
        print(f"{preset} vocab {args.vocab}: {r['step_s_median']:.2f} s/step; {kinds}; products at "
              f"{r['matrix_products_rate_of_peak']:.0%} of the peak, MFU {r['mfu_of_profiled_operator_time']:.0%}",
              flush=True)  # fmt: skip
    out = write_result(RESULTS / "pretrain_profile_cpu.json", results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
