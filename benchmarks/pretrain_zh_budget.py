"""A Chinese BERT pre-trained for a fixed time on shared/data/pretrain_zh, then fine-tuned on ChnSentiCorp and
CLUENER2020 from its weights and from random initialisation: what a time budget buys on one device.

    python benchmarks/pretrain_zh_budget.py --device cuda --model small --minutes 4 \\
        --results benchmarks/results/pretrain_zh_budget_cuda.json
    python benchmarks/pretrain_zh_budget.py --device cpu --quick --results /tmp/budget.json   # a dry run

vocab (12,000 pieces, as benchmarks/pretrain_zh_mini.py) -> prepare (128-token pairs) -> `bertkit pretrain` with
`--max-minutes` (MLM + 0.1 x NSP, the quickstart's weight) -> `bertkit finetune` of both arms at the learning rates
and flags of benchmarks/finetune_real.py's Chinese jobs, all fine-tuning runs at once (one process each; a small
model leaves a GPU mostly idle) -> one results file with the held-out pre-training metrics, each arm's best dev
score and, beside them, the CPU `mini` of the README (finetune_real.json's zh_comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, RESULTS, run_bertkit, write_result
from finetune_real import ZH_METRIC, ZH_TASKS, zh_comparison, zh_jobs

from bertkit.recipes.small_scale import random_init_twin
from bertkit.train.metrics_log import read_metrics_log

TASKS = ("chnsenticorp", "cluener")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="small", help="size preset to pre-train")
    ap.add_argument("--minutes", type=float, default=4.0, help="pre-training time budget")
    ap.add_argument("--max-steps", type=int, default=6000, help="sets the lr schedule; --minutes may stop it first")
    ap.add_argument(
        "--calibrate", default=None,
        help="a throughput.py results file: --max-steps becomes the steps its bertkit step time fits in --minutes",
    )  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--learning-rate", default="5e-4")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data-loading processes")
    ap.add_argument("--quick", action="store_true", help="tiny model, 30 s, 300 examples a task: checks the script")
    ap.add_argument("--out", default="runs/bench_pretrain_zh_budget")
    ap.add_argument("--results", default=str(RESULTS / "pretrain_zh_budget_cuda.json"))
    args = ap.parse_args()
    out = Path(args.out)
    if args.quick:
        args.model, args.minutes, args.max_steps, args.batch_size = "tiny", 0.5, 60, 32
    if args.calibrate:
        # The model's step alone (vocabulary 21,128, batch 128); the trainer adds loading, logging and evaluation,
        # so the schedule is set a tenth shorter than the budget would otherwise fit.
        measured = json.loads(Path(args.calibrate).read_text()).get("pretrain", {})
        step_s = measured.get(f"{args.model}_vocab21128_fused", {}).get("step_s", {}).get("bertkit")
        if step_s:
            args.max_steps = int(args.minutes * 60 / (step_s * 1.1))
            print(f"--max-steps {args.max_steps}: {step_s * 1000:.1f} ms a step in {args.calibrate}", flush=True)
    corpus = sorted(str(p) for p in (DATA / "pretrain_zh").glob("*.txt"))
    t_start = time.perf_counter()
    if not (out / "tokenizer/vocab.txt").is_file():
        run_bertkit("vocab", "--corpus", *corpus, "--vocab-size", "12000", "--out", str(out / "tokenizer"))
    data = out / "data_128"
    if not (data / "manifest.json").is_file():
        run_bertkit("prepare", "--corpus", *corpus, "--tokenizer", str(out / "tokenizer"), "--out", str(data),
                    "--workers", str(args.workers))  # fmt: skip
    t_data = time.perf_counter() - t_start
    run = out / "run"
    settings = [
        "--model", args.model, "--max-steps", str(args.max_steps), "--max-minutes", str(args.minutes),
        "--batch-size", str(args.batch_size), "--learning-rate", args.learning_rate, "--warmup-ratio", "0.06",
        "--dropout", "0", "--nsp-weight", "0.1", "--eval-every", "1000", "--eval-instances", "1000",
        "--save-every", "100000", "--log-every", "50", "--workers", str(args.workers), "--device", args.device,
    ]  # fmt: skip
    t0 = time.perf_counter()
    run_bertkit("pretrain", "--data", str(data), "--out", str(run), "--overwrite", *settings, log=out / "pretrain.log")
    wall = time.perf_counter() - t0
    rows = read_metrics_log(run / "metrics.jsonl")
    evals = [r for r in rows if r.get("split") == "eval"]
    train = [r for r in rows if r.get("split", "train") == "train" and "tokens_per_s" in r]
    manifest = json.loads((data / "manifest.json").read_text())
    cpu_file = RESULTS / "finetune_real.json"
    cpu_mini = json.loads(cpu_file.read_text())["zh_comparison"] if cpu_file.is_file() else {}
    result = {
        "benchmark": "pretrain_zh_budget",
        "command": " ".join(["python", "benchmarks/pretrain_zh_budget.py", *sys.argv[1:]]),
        "corpus": "shared/data/pretrain_zh (Lu Xun, zhwiki sample, three Ming novels)",
        "pretrain_settings": ["--max-seq-length", "128", *settings],
        "training_tokens": manifest["splits"]["train"]["tokens"],
        "training_instances": manifest["splits"]["train"]["instances"],
        "vocab_size": manifest["vocab_size"],
        "seconds": {"vocab_and_prepare": round(t_data, 1), "pretrain": round(wall, 1)},
        "pretrain_steps": max((r["step"] for r in rows), default=0),
        "median_train_tokens_per_s": sorted(r["tokens_per_s"] for r in train)[len(train) // 2] if train else None,
        "final_heldout": evals[-1] if evals else None,
        "last_logged_train_loss": train[-1]["loss"] if train else None,
        "heldout_curve": evals,
        "finetune_flags": {task: ZH_TASKS[task] for task in TASKS},
        "finetune_metric": {task: ZH_METRIC[task] for task in TASKS},
        "cpu_mini_reference": {task: cpu_mini.get(task) for task in TASKS},
    }
    write_result(args.results, result)  # pre-training's figures are kept should fine-tuning not finish
    models = {"pretrained": run / "model", "random": random_init_twin(run / "model", out / "random_init", seed=0)}

    # Every fine-tuning run at once, each in its own process with a few CPU threads.
    jobs: dict[str, subprocess.Popen] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    for task in TASKS:
        for name, flags in zh_jobs(task, models).items():
            cli = [*flags, "--device", args.device, "--out", str(out / "finetune" / name), "--overwrite"]
            if args.quick:
                cli += ["--max-train-examples", "300"]
            with open(out / "logs" / f"{name}.log", "w") as log:  # the child keeps its own copy open
                jobs[name] = subprocess.Popen([sys.executable, "-m", "bertkit.cli", "finetune", *cli], env=env,
                                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    finetune = {"jobs": {}}
    failed = []
    for name, proc in jobs.items():
        if proc.wait() != 0:
            failed.append(name)
            continue
        metrics = json.loads((out / "finetune" / name / "metrics.json").read_text())
        finetune["jobs"][name] = {"dev": metrics["dev"], "best_step": metrics["best_step"]}
    result["seconds"]["finetune_all_at_once"] = round(time.perf_counter() - t1, 1)
    result["finetune_jobs"] = finetune["jobs"]
    result["finetune_failed"] = failed
    result["comparison"] = {task: row for task, row in zh_comparison(finetune).items() if task in TASKS}
    write_result(args.results, result)
    print(json.dumps({"final_heldout": result["final_heldout"], "comparison": result["comparison"]}, indent=1))
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (logs in {out / 'logs'})")


if __name__ == "__main__":
    main()
