"""`bertkit pretrain` end to end in fp32 and with `--precision bf16` (CPU autocast): speed and losses.

    python benchmarks/pretrain_precision.py [--model mini] [--steps 60] [--repeats 2]

A WordPiece vocabulary of 21,128 (bert-base-chinese's size) and pre-training data are made from the shared
Chinese wiki sample (`bertkit vocab`, `bertkit prepare`); then `bertkit pretrain` runs `--steps` steps (batch 32,
dropout 0.1, no evaluation or checkpoints in between) with each precision, alternating, `--repeats` times each, so
that a slow spell of the machine hits both. Reported: the trainer's own tokens/s (every 10 steps; wall time of the
whole step: data, forward, backward, optimizer), medians per run and over runs, bf16 / fp32, the logged losses of
each run, and the largest relative difference between the two precisions' losses at the same step. bf16 is native
only where the CPU has AVX512-BF16 or AMX (the machine's flags are in the file); elsewhere it is emulated and slower.
Writes benchmarks/results/pretrain_precision_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import DATA, RESULTS, run_bertkit, write_result

CORPUS = DATA / "pretrain_zh/zhwiki_sample.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mini", help="size preset")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2, help="runs per precision, alternating")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        tok, data = str(work / "tok"), str(work / "data")
        run_bertkit("vocab", "--corpus", str(CORPUS), "--vocab-size", "21128", "--out", tok, quiet=True)
        run_bertkit("prepare", "--corpus", str(CORPUS), "--tokenizer", tok, "--out", data, quiet=True)
        for n in range(args.repeats):
            for precision in runs:
                out = work / f"run_{precision}_{n}"
                run_bertkit("pretrain", "--data", data, "--model", args.model, "--out", str(out),
                            "--max-steps", str(args.steps), "--precision", precision, "--device", "cpu",
                            "--eval-every", "0", "--save-every", "0", "--log-every", "10", quiet=True)  # fmt: skip
                rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
                train = [r for r in rows if r.get("split", "train") == "train"]
                run = {"tokens_per_s": [round(r["tokens_per_s"]) for r in train],
                       "losses": [r["loss"] for r in train]}  # fmt: skip
                run["median_tokens_per_s"] = statistics.median(run["tokens_per_s"])
                runs[precision].append(run)
                print(f"{precision} run {n + 1}: median {run['median_tokens_per_s']:,.0f} tok/s", flush=True)
    median = {p: statistics.median(r["median_tokens_per_s"] for r in rs) for p, rs in runs.items()}
    worst = max(abs(b / a - 1) for f, g in zip(runs["fp32"], runs["bf16"], strict=True)
                for a, b in zip(f["losses"], g["losses"], strict=True))  # fmt: skip
    result = {"model": args.model, "steps": args.steps, "batch_size": 32, "vocab_size": 21128,
              "corpus": "pretrain_zh/zhwiki_sample.txt", "runs": runs, "median_tokens_per_s": median,
              "bf16_over_fp32": round(median["bf16"] / median["fp32"], 2),
              "largest_relative_loss_difference": worst}  # fmt: skip
    path = write_result(RESULTS / "pretrain_precision_cpu.json", result)
    print(f"fp32 {median['fp32']:,.0f} tok/s, bf16 {median['bf16']:,.0f} tok/s ({result['bf16_over_fp32']}x); "
          f"losses within {100 * worst:.3f}% of each other; wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
