"""How pre-training's lead on review sentiment depends on the number of labelled reviews, on one quickstart run.

    python benchmarks/quickstart_sentiment_labels.py --run runs/quickstart [--sizes 500,1000,3000] [--seeds 3]

Takes a finished `bertkit quickstart` folder (its pre-trained model, its random-init twin, its sentiment train and
dev files) and fine-tunes both for review sentiment on the first N training reviews, for each N in --sizes and
each fine-tuning seed, with the quickstart's settings (3 epochs, lr 1e-3, batch 32, best dev epoch kept). Every
run scores the same dev reviews. Writes benchmarks/results/quickstart_sentiment_labels.json: per size and
initialisation the scores, their mean and sample std, and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, write_result

from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished quickstart folder (holds results.json)")
    ap.add_argument("--sizes", default="500,1000,3000", help="labelled training reviews, comma-separated")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds 0..N-1 per size and initialisation")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--results", default=str(RESULTS / "quickstart_sentiment_labels.json"))
    args = ap.parse_args()
    run = Path(args.run)
    summary = json.loads((run / "results.json").read_text(encoding="utf-8"))
    models = {"pretrained": run / "pretrain" / "model", "random": run / "random_init"}
    train, dev = run / "tasks" / "sentiment_train.tsv", run / "tasks" / "sentiment_dev.tsv"
    available = sum(1 for _ in train.open(encoding="utf-8")) - 1  # minus the header
    sizes = [int(n) for n in args.sizes.split(",")]
    if max(sizes) > available:
        raise SystemExit(f"{train} holds {available} reviews; --sizes asks for {max(sizes)}")

    t0 = time.perf_counter()
    table: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for init, model in models.items():
                scores = []
                for seed in range(args.seeds):
                    cfg = FinetuneConfig(
                        task="cls", model=str(model), train_file=str(train), dev_file=str(dev),
                        out=str(Path(tmp) / f"{init}_{n}_{seed}"), epochs=args.epochs, max_train_examples=n,
                        save_model=False, train=finetune_training(learning_rate=args.lr, seed=seed, progress=False),
                    )  # fmt: skip
                    scores.append(run_finetune(cfg)["dev"]["accuracy"])
                    print(f"{n} reviews, {init}, seed {seed}: {scores[-1]:.3f}", flush=True)
                table.setdefault(str(n), {})[init] = {
                    "scores": scores,
                    "mean": statistics.fmean(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                }
            row = table[str(n)]
            row["lead"] = row["pretrained"]["mean"] - row["random"]["mean"]
            print(f"{n} reviews: pre-trained {row['pretrained']['mean']:.3f} vs random {row['random']['mean']:.3f}")

    result = {
        "benchmark": "quickstart_sentiment_labels",
        "run": str(run),
        "pretraining": summary.get("pretraining"),
        "dev_examples": summary["plan"]["dev_examples"],
        "settings": {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": 32, "seeds": args.seeds},
        "dev_accuracy_by_labelled_reviews": table,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    out = write_result(args.results, result)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
