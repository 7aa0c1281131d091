"""Pre-training end to end with bertkit's GELU against PyTorch's F.gelu (oneDNN's kernel on the CPU).

    python benchmarks/gelu_kernel.py [--presets tiny mini] [--steps 400 100] [--repeats 2]

On the CPU PyTorch sends a float32 GELU to oneDNN, which compiles a kernel for each tensor shape and caches up to
1,024 of them. bertkit's encoder removes padding, so its token count changes with every batch; `bertkit.model.gelu`
runs PyTorch's own kernel instead. This runs `bertkit pretrain` on real data (a 21,128 WordPiece vocabulary and
pre-training pairs from the shared Chinese wiki sample; batch 32, dropout 0.1, no evaluation or checkpoints in
between) once with each GELU, alternating, `--repeats` times per preset, each run in a fresh process. Reported:
the trainer's tokens/s (median of its 10-step logs after the first), the process's peak RSS, and the largest
relative difference between the two GELUs' logged losses at the same step (the kernels round differently).
Writes benchmarks/results/gelu_kernel_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATA, RESULTS, run_bertkit, write_result

CORPUS = DATA / "pretrain_zh/zhwiki_sample.txt"

# The run in a child: bertkit's command line, with F.gelu put back in place of bertkit's GELU when asked.
CHILD = """
import json, resource, sys
import torch.nn.functional as F
import bertkit.model
if sys.argv[1] == "F.gelu":
    bertkit.model.ACTIVATIONS["gelu"] = F.gelu
from bertkit.cli import main
status = main(sys.argv[2:])
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
sys.exit(status)
"""


def pretrain(gelu: str, work: Path, preset: str, steps: int, out: Path) -> dict:
    cmd = ["pretrain", "--data", str(work / "data"), "--model", preset, "--out", str(out), "--max-steps", str(steps),
           "--device", "cpu", "--eval-every", "0", "--save-every", "0", "--log-every", "10"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CHILD, gelu, *cmd], check=True, capture_output=True, text=True)
    peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split", "train") == "train"]
    return {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in train[1:])), "peak_rss_mib": round(peak),
            "losses": [r["loss"] for r in train]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "mini"])
    ap.add_argument("--steps", type=int, nargs="+", default=[400, 100], help="steps per run, one per preset")
    ap.add_argument("--repeats", type=int, default=2, help="runs per GELU and preset, alternating")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        tok, data = str(work / "tok"), str(work / "data")
        run_bertkit("vocab", "--corpus", str(CORPUS), "--vocab-size", "21128", "--out", tok, quiet=True)
        run_bertkit("prepare", "--corpus", str(CORPUS), "--tokenizer", tok, "--out", data, quiet=True)
        for preset, steps in zip(args.presets, args.steps, strict=True):
            runs: dict[str, list[dict]] = {"bertkit": [], "F.gelu": []}
            for n in range(args.repeats):
                for gelu, done in runs.items():
                    done.append(pretrain(gelu, work, preset, steps, work / f"{preset}_{gelu}_{n}"))
                    print(f"{preset} {gelu} run {n + 1}: {done[-1]['tokens_per_s']:,.0f} tok/s, "
                          f"peak {done[-1]['peak_rss_mib']} MiB", flush=True)  # fmt: skip
            speed = {g: statistics.median(r["tokens_per_s"] for r in rs) for g, rs in runs.items()}
            peak = {g: statistics.median(r["peak_rss_mib"] for r in rs) for g, rs in runs.items()}
            results.append({
                "preset": preset, "steps": steps,
                "median_tokens_per_s": {g: round(v) for g, v in speed.items()},
                "median_peak_rss_mib": peak,
                "bertkit_over_f_gelu_speed": round(speed["bertkit"] / speed["F.gelu"], 3),
                "largest_relative_loss_difference": max(abs(x / y - 1) for a, b in zip(*runs.values(), strict=True)
                                                        for x, y in zip(a["losses"], b["losses"], strict=True)),
                "runs": {g: [{k: v for k, v in r.items() if k != "losses"} for r in rs] for g, rs in runs.items()},
            })  # fmt: skip
    result = {"command": "python benchmarks/gelu_kernel.py " + " ".join(
                  ["--presets", *args.presets, "--steps", *map(str, args.steps), "--repeats", str(args.repeats)]),
              "batch_size": 32, "vocab_size": 21128, "corpus": "pretrain_zh/zhwiki_sample.txt",
              "results": results}  # fmt: skip
    print(f"wrote {write_result(RESULTS / 'gelu_kernel_cpu.json', result)}")


if __name__ == "__main__":
    main()
