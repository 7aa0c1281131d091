"""Where a GPU pre-training step's time goes: bertkit's and transformers' step under torch.profiler.

    python benchmarks/gpu_profile.py [--preset base] [--batch-size 128] [--out benchmarks/results/gpu_profile_cuda.json]

The step is `benchmarks/throughput.py`'s (real lengths 64-128 padded to 128, 15% predicted, bf16 autocast, fused
AdamW, dropout 0.1 as in BERT), timed and then profiled for `--steps` steps each, after five warm-up steps. Reported
per implementation: the step's wall time (timed without the profiler); the GPU's busy time (the sum of its
kernels', copies' and fills' durations: the rest of the wall time the GPU waits for the host to launch work); the
kernel launches per step; the kernels grouped by kind (matrix products, attention, the optimizer, the rest:
element-wise and reductions) and the top 12 kernels.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers
from common import RESULTS, write_result
from throughput import interleaved, pretraining_batch, sync
from torch.profiler import ProfilerActivity, profile

from bertkit import BertConfig, BertForPreTraining
from bertkit.train.optim import build_optimizer

transformers.logging.set_verbosity_error()
KINDS = {  # by kernel name: cuBLAS / CUTLASS products, SDPA's kernels, torch's fused AdamW
    "matrix products": ("gemm", "xmma", "cutlass", "nvjet", "cublas"),
    "attention": ("fmha", "flash", "attention", "cudnn"),
    "optimizer": ("adam",),
}


def kind_of(name: str) -> str:
    """The kind (a KINDS key, else element-wise and other) of a GPU kernel, by its name."""
    low = name.lower()
    return next((kind for kind, keys in KINDS.items() if any(k in low for k in keys)), "element-wise and other")


def profile_step(step, steps: int, device: torch.device) -> dict:
    """`step` timed on its own (median of `steps`), then profiled for `steps` more: the wall time, the kernels' busy
    time, launches and the kernels by kind, per step. The wall time is taken outside the profiler, whose own work on
    the host lengthens a step."""
    wall = interleaved({"step": step}, steps, 1, device, warmup=5)["step"]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
            sync(device)
    kernels: dict[str, list[float]] = {}  # kernel name -> microseconds of each launch
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(e.name, []).append(e.time_range.elapsed_us())
    busy_us = sum(sum(v) for v in kernels.values()) / steps  # kernels, copies and fills alike
    by_kind: dict[str, float] = {}
    for name, times in kernels.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + sum(times) / steps / 1000
    top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:12]
    return {
        "step_ms": wall * 1000,
        "gpu_busy_ms": busy_us / 1000,
        "gpu_busy_share": busy_us / 1e6 / wall,  # the rest: the GPU idle, waiting for the host
        "gpu_operations_per_step": sum(len(v) for v in kernels.values()) / steps,
        "kernel_launches_per_step": sum(len(v) for n, v in kernels.items() if not n.startswith(("Memcpy", "Memset")))
        / steps,
        "gpu_ms_by_kind": by_kind,
        "top_kernels_ms": {name[:120]: sum(t) / steps / 1000 for name, t in top},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (no kernels to report)")
    ap.add_argument("--out", default=str(RESULTS / "gpu_profile_cuda.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = BertConfig.preset(args.preset, vocab_size=args.vocab)
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg).to(device).train()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        ref = transformers.BertForPreTraining.from_pretrained(d, attn_implementation="sdpa").to(device).train()
    batch, labels, nsp, lengths, _ = pretraining_batch(args.batch_size, args.seq_len, cfg.vocab_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    labels, nsp = labels.to(device), nsp.to(device)
    results: dict = {"preset": args.preset, "vocab_size": args.vocab, "batch": args.batch_size,
                     "seq_len": args.seq_len, "real_tokens": sum(lengths), "precision": "bf16 autocast"}  # fmt: skip
    for name, model, kwargs in (
        ("bertkit", ours, {"mlm_labels": labels, "nsp_labels": nsp}),
        ("transformers", ref, {"labels": labels, "next_sentence_label": nsp}),
    ):
        opt = build_optimizer(model, 1e-4, device=device, fused=True)

        def step(model=model, opt=opt, kwargs=kwargs) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(**batch, **kwargs).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        r = profile_step(step, args.steps, device)
        results[name] = r
        print(f"{name}: step {r['step_ms']:.1f} ms, GPU busy {r['gpu_busy_ms']:.1f} ms "
              f"({r['gpu_busy_share']:.0%}), {r['kernel_launches_per_step']:.0f} kernels; by kind "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in r["gpu_ms_by_kind"].items()), flush=True)  # fmt: skip
    write_result(args.out, results)


if __name__ == "__main__":
    main()
