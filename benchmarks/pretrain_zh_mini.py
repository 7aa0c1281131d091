"""Learning on real data: the `mini` preset pre-trained on the shared data's pretrain_zh corpus within a time budget.

    python benchmarks/pretrain_zh_mini.py [--minutes 30] [--out runs/bench_pretrain_zh]

Runs vocab -> prepare -> pretrain through the CLI, then writes benchmarks/results/pretrain_zh_mini.json with the
held-out curve (MLM loss/accuracy, NSP accuracy), the settings and the machine. Targets: held-out MLM
accuracy >= 0.30 and NSP accuracy >= 0.75 within 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import DATA, RESULTS, run_bertkit, write_result

from bertkit.train.metrics_log import read_metrics_log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="pre-training time budget")
    ap.add_argument("--max-steps", type=int, default=3800, help="sets the lr schedule; --minutes may stop it first")
    ap.add_argument("--out", default="runs/bench_pretrain_zh")
    ap.add_argument("--max-seq-length", type=int, default=64, help="64 doubles the steps that fit the budget")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", default="1e-3")
    ap.add_argument("--init-range", default="0.05", help="init std; 0.05 learned faster than BERT's 0.02 at this scale")
    ap.add_argument(
        "--nsp-weight", default="0.1",
        help="NSP loss weight; at weight 1 the small model's masked LM stayed on its plateau (nsp_plateau.json)",
    )  # fmt: skip
    args = ap.parse_args()
    out = Path(args.out)
    corpus = sorted(str(p) for p in (DATA / "pretrain_zh").glob("*.txt"))
    if not (out / "tokenizer/vocab.txt").is_file():
        run_bertkit("vocab", "--corpus", *corpus, "--vocab-size", "12000", "--out", str(out / "tokenizer"))
    data = out / f"data_{args.max_seq_length}"
    if not (data / "manifest.json").is_file():
        run_bertkit("prepare", "--corpus", *corpus, "--tokenizer", str(out / "tokenizer"), "--out", str(data),
            "--max-seq-length", str(args.max_seq_length))  # fmt: skip
    shutil.rmtree(out / "run", ignore_errors=True)
    settings = [
        "--model", "mini", "--max-steps", str(args.max_steps), "--max-minutes", str(args.minutes),
        "--batch-size", str(args.batch_size), "--learning-rate", args.learning_rate, "--warmup-ratio", "0.06",
        "--dropout", "0", "--init-range", args.init_range, "--nsp-weight", args.nsp_weight,
        "--eval-every", "250", "--eval-instances", "1000", "--save-every", "500", "--log-every", "25",
    ]  # fmt: skip
    t0 = time.perf_counter()
    run_bertkit("pretrain", "--data", str(data), "--out", str(out / "run"), *settings)
    wall = time.perf_counter() - t0
    rows = read_metrics_log(out / "run" / "metrics.jsonl")
    evals = [r for r in rows if r.get("split") == "eval"]
    train = [r for r in rows if r.get("split", "train") == "train"]
    final = evals[-1]
    result = {
        "benchmark": "pretrain_zh_mini",
        "corpus": "shared/data/pretrain_zh (Lu Xun, zhwiki sample, three Ming novels)",
        "settings": ["--max-seq-length", str(args.max_seq_length), *settings],
        "wall_seconds_pretrain": round(wall, 1),
        "final_step": final["step"],
        "final_heldout": {
            k: final.get(k)
            for k in (
                "mlm_loss",
                "mlm_accuracy",
                "masked_accuracy",
                "masked_majority",
                "nsp_accuracy",
                "eval_instances",
            )
        },
        "targets": {"mlm_accuracy": 0.30, "nsp_accuracy": 0.75},
        "met": final["mlm_accuracy"] >= 0.30 and final["nsp_accuracy"] >= 0.75,
        "heldout_curve": evals,
        "median_train_tokens_per_s": sorted(r["tokens_per_s"] for r in train)[len(train) // 2],
    }
    write_result(RESULTS / "pretrain_zh_mini.json", result)
    shutil.copy(out / "run/curves.png", RESULTS / "pretrain_zh_mini_curves.png")
    print(json.dumps(result["final_heldout"]), "targets met" if result["met"] else "targets NOT met")


if __name__ == "__main__":
    main()
