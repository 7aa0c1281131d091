"""Does BERT's long-sequence last phase matter here? The quickstart pre-trains on pairs of up to 64 tokens and
fine-tunes NER at 128, so positions 64..127 start untrained; BERT pre-trained its last 10% of steps at full length
for this reason. Two arms continue the same quickstart model for the same number of steps (lr a tenth of the
quickstart's peak, 10% warm-up, then linear decay), one on 64-token pairs, one on 128-token pairs; each is then
fine-tuned on the quickstart's NER task (same data, seed, epochs, lr), and scored on the dev sentences that fit
in 64 tokens and on those that do not.

    python benchmarks/long_phase.py --quickstart runs/quickstart      # a finished `bertkit quickstart` folder

Writes benchmarks/results/long_phase.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, write_result

from bertkit.data.task_files import read_conll
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.recipes.quickstart import QuickstartPlan
from bertkit.recipes.small_scale import prepared_pairs, pretrain_run
from bertkit.tasks.model_dir import open_task_model


def split_by_length(dev: Path, out: Path, tok_dir: Path, limit: int) -> dict[str, Path]:
    """The dev sentences whose encoding fits in `limit` tokens ([CLS] .. [SEP]) and the rest, as two CoNLL files."""
    from bertkit.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tok_dir)
    groups: dict[str, list[str]] = {"short": [], "long": []}
    for sent in read_conll(dev):
        n = len(tok.encode("".join(sent.tokens)).input_ids)
        rows = "\n".join(f"{t} {g}" for t, g in zip(sent.tokens, sent.tags or [], strict=True))
        groups["short" if n <= limit else "long"].append(rows)
    paths = {}
    for name, rows in groups.items():
        paths[name] = out / f"ner_dev_{name}.txt"
        paths[name].write_text("\n\n".join(rows) + "\n", encoding="utf-8")
    return paths


def scores_by_length(ner: Path, dev_parts: dict[str, Path]) -> dict[str, float]:
    """Entity F1 of a fine-tuned NER model on the whole dev set (its metrics.json) and on each part."""
    model = open_task_model(ner, "cpu")
    scores = {"all": json.loads((ner / "metrics.json").read_text())["dev"]["f1"]}
    for part, path in dev_parts.items():
        scores[part] = model.evaluate(model.task.read(path), path)["f1"]
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart", default="runs/quickstart", help="a finished bertkit quickstart folder")
    ap.add_argument("--steps", type=int, default=400, help="continued pre-training steps per arm (10%% of 4,000)")
    ap.add_argument("--work", default="runs/long_phase")
    args = ap.parse_args()
    qs, work = Path(args.quickstart), Path(args.work)
    plan, run = QuickstartPlan(), json.loads((qs / "run.json").read_text())
    seed = run["seed"]
    corpora = [*sorted((qs / "corpus").glob("*.txt")), qs / "tasks" / "reviews_unlabelled.txt"]
    tasks = qs / "tasks"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"quickstart": str(qs), "seed": seed, "steps": args.steps, "arms": {}}
    dev_parts = split_by_length(tasks / "ner_dev.txt", work, qs / "tokenizer", plan.max_seq_length)
    results["dev_sentences"] = {k: len(read_conll(p)) for k, p in dev_parts.items()}

    for length in (plan.max_seq_length, 128):
        arm = f"continue_{length}"
        data = prepared_pairs(corpora, qs / "tokenizer", work / f"data_{length}", length, seed)
        run_dir = work / arm
        pretrain_run(plan, data, run_dir, seed=seed, evals=1, checkpoints=1, nsp_weight=plan.nsp_weight,
                     steps=args.steps, model=str(qs / "pretrain" / "model"), learning_rate=plan.pretrain_lr / 10,
                     warmup_ratio=0.1)  # fmt: skip
        ner = work / f"ner_{arm}"
        if not (ner / "metrics.json").is_file():
            run_finetune(FinetuneConfig(
                task="ner", model=str(run_dir / "model"), train_file=str(tasks / "ner_train.txt"),
                dev_file=str(tasks / "ner_dev.txt"), out=str(ner), epochs=plan.ner_epochs,
                max_train_examples=plan.train_examples["ner"],
                train=finetune_training(learning_rate=plan.finetune_lrs[0], seed=seed),
            ))  # fmt: skip
        scores = scores_by_length(ner, dev_parts)
        results["arms"][arm] = {"pretraining_sequence_length": length, "ner_dev_f1": scores}
        print(f"{arm}: NER dev F1 {scores}", flush=True)

    # For reference, the quickstart's own NER model (no continued pre-training), scored the same way.
    ner = qs / "finetune" / f"ner_pretrained_lr{plan.finetune_lrs[0]:g}_seed{seed}"
    if (ner / "metrics.json").is_file():
        results["arms"]["quickstart_as_is"] = {"pretraining_sequence_length": plan.max_seq_length,
                                               "ner_dev_f1": scores_by_length(ner, dev_parts)}  # fmt: skip
    a, b = (results["arms"][f"continue_{n}"]["ner_dev_f1"] for n in (plan.max_seq_length, 128))
    results["long_minus_short"] = {k: b[k] - a[k] for k in a}
    out = write_result(RESULTS / "long_phase.json", results)
    print(f"128-token phase minus 64-token phase: {results['long_minus_short']}\nwrote {out}")


if __name__ == "__main__":
    main()
