"""Gradient checkpointing's trade: peak memory and step time of pre-training steps with and without it.

    python benchmarks/gradient_checkpointing.py [--preset small] [--seq 512] [--batch 8] [--steps 3]

Each mode runs in a fresh process (so that its peak resident memory is its own): the `--preset` model, random
token batches of `--batch` x `--seq` (no padding), MLM on 15% of positions plus NSP, AdamW; one warm-up step, then
`--steps` timed. Reported per mode: the process's peak RSS (ru_maxrss), the median step time, and the loss of the
first step (equal in both modes: the same computation). Writes benchmarks/results/gradient_checkpointing_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import RESULTS, write_result


def one_mode(preset: str, seq: int, batch: int, steps: int, checkpointing: bool) -> dict:
    import resource

    import torch

    from bertkit.config import BertConfig
    from bertkit.model import BertForPreTraining
    from bertkit.train.optim import build_optimizer

    torch.manual_seed(0)
    config = BertConfig.preset(preset, vocab_size=21128, max_position_embeddings=max(512, seq))
    model = BertForPreTraining(config).train()
    model.bert.gradient_checkpointing = checkpointing
    optimizer = build_optimizer(model, 1e-4, 0.01, 1e-6, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, config.vocab_size, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(batch, seq, generator=g) < 0.15
    labels[chosen] = ids[chosen]
    times, losses = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(ids, torch.zeros_like(ids), torch.ones_like(ids), mlm_labels=labels,
                    nsp_labels=torch.zeros(batch, dtype=torch.long))  # fmt: skip
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(out.loss.item())
    return {
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_s_median": round(statistics.median(times[1:]), 3),
        "first_loss": losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_mode(args.preset, args.seq, args.batch, args.steps, args.child == "checkpointing")))
        return
    results: dict = {"preset": args.preset, "seq": args.seq, "batch": args.batch, "steps_timed": args.steps}
    results["modes"] = {}
    for mode in ("plain", "checkpointing"):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--seq", str(args.seq), "--batch", str(args.batch),
               "--steps", str(args.steps), "--child", mode]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results["modes"][mode] = json.loads(out)
        print(mode, results["modes"][mode], flush=True)
    plain, ckpt = results["modes"]["plain"], results["modes"]["checkpointing"]
    results["memory_ratio"] = round(ckpt["peak_rss_mib"] / plain["peak_rss_mib"], 3)
    results["time_ratio"] = round(ckpt["step_s_median"] / plain["step_s_median"], 3)
    print(f"wrote {write_result(RESULTS / 'gradient_checkpointing_cpu.json', results)}")


if __name__ == "__main__":
    main()
