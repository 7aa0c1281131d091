"""Correctness on a CUDA device: what the CPU test suite checks, run where users pre-train.

    python benchmarks/cuda_checks.py --device cuda --out benchmarks/results/cuda_checks.json
    python benchmarks/cuda_checks.py --device cpu --quick --out /tmp/cuda_checks.json   # a dry run of the script

Each check records what it measured and the tolerance it is held to; a check that raises records its error and the
others still run. The exit status is 1 when any check failed or missed its tolerance.
- fast_vs_plain: the unpadded fast path against the plain padded path on the same weights and batch, outputs and
  gradients, fp32 and bf16 autocast.
- vs_transformers: bertkit's BertForPreTraining against transformers' (sdpa) on the same weights and batch, fp32
  (TF32 off: the products are plain fp32) and bf16 autocast; outputs on real tokens, losses, gradients.
On CUDA the process is set up as bertkit's trainer sets it (`configure_cuda`: no cuDNN attention), TF32 aside.
- finetune_parity: 30 steps of sequence-classification training on SST-2 sentences, bertkit against transformers
  from the same weights (a MiniLM-shaped model, L6/H384), same batches and optimizer, fp32, dropout off.
- bf16_training: `bertkit pretrain` for 50 steps in bf16 autocast and in fp32 from the same seed and data.
- resume: `bertkit pretrain` for 40 steps, saving at step 20; a copy of its run folder cut back to that checkpoint
  and resumed equals the uninterrupted run, compared with a second uninterrupted run as the noise floor.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from common import DATA, HERE, run_bertkit, write_result
from safetensors.torch import load_file
from throughput import autocast, pretraining_batch

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.checkpoint import to_hf_state_dict
from bertkit.data.config import PrepareConfig
from bertkit.data.prepare import prepare
from bertkit.data.task_files import read_classification
from bertkit.model import BertForSequenceClassification, attention_groups, group_cost_on
from bertkit.train.distributed import configure_cuda
from bertkit.train.metrics_log import read_metrics_log
from bertkit.train.state import LATEST, checkpoint_name

transformers.logging.set_verbosity_error()
# The fine-tuning check is tests/test_finetune_parity.py's loop run on the device: one piece of code for both.
sys.path.insert(0, str(HERE.parent / "tests"))
from helpers import train_both  # noqa: E402

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# The key projection's bias, under transformers' name and under bertkit's fused QKV (its last third).
KEY_BIAS = re.compile(r"attention\.self\.key\.bias$")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64; infinite where either holds a NaN or an infinity, so that no tolerance
    passes it (a NaN would otherwise fall out of every `max`)."""
    a, b = a.detach().double(), b.detach().double()
    error = float((a - b).norm() / b.norm().clamp_min(1e-30))
    return error if math.isfinite(error) else math.inf


def worst_gradient_relative(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, str]:
    """The largest `relative` error over named gradient pairs (ours, reference), and its parameter's name. The
    attention's key bias is left out: its gradient is zero in exact arithmetic (a constant added to every score of a
    query does not change its softmax), so what both sides compute there is rounding noise."""
    errors = {n: relative(a, b) for n, (a, b) in pairs.items() if not KEY_BIAS.search(n)}
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest elementwise |a - b|, in float64; infinite where either holds a NaN or an infinity."""
    error = float((a.detach().double() - b.detach().double()).abs().max())
    return error if math.isfinite(error) else math.inf


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's gradients under transformers' names (bertkit's fused QKV gradient split in three)."""
    return to_hf_state_dict(model, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})


# ---------------------------------------------------------------------------------------------- in-process checks
def fast_vs_plain(device: torch.device, quick: bool) -> dict:
    """Fast (unpadded) vs plain (padded) path: MLM logits on real tokens, NSP logits, loss, every gradient."""
    cfg = BertConfig.preset("mini", vocab_size=21128, **NO_DROPOUT)
    torch.manual_seed(0)
    fast = BertForPreTraining(cfg).to(device)
    plain = BertForPreTraining(cfg).to(device)
    plain.load_state_dict(fast.state_dict())
    plain.bert.unpad = False
    # Real lengths 8-512 padded to 512: sequences of very different lengths, so that attention runs in several
    # groups on a GPU too (a batch of lengths 64-128 is one group there, as it is on the plain path).
    batch, labels, nsp, lengths, _ = pretraining_batch(8 if quick else 32, 512, cfg.vocab_size, min_length=8)
    batch = {k: v.to(device) for k, v in batch.items()}
    labels, nsp = labels.to(device), nsp.to(device)
    real = batch["attention_mask"].bool()
    n_head = cfg.num_attention_heads
    out: dict = {"attention_groups": len(attention_groups(lengths, n_head, 512, group_cost_on(device)))}
    # fp32: two orders of the same float32 sums; bf16: each product rounds its inputs to 8 bits of mantissa, and
    # the two paths multiply matrices of different shapes, so their roundings differ by a few bf16 steps (2^-8).
    for name, bf16, tol_out, tol_grad in (("fp32", False, 1e-5, 1e-4), ("bf16", True, 2e-2, 5e-2)):
        res = {}
        for tag, model in (("fast", fast), ("plain", plain)):
            model.zero_grad(set_to_none=True)
            with autocast(device, "bf16" if bf16 else "fp32"):
                logits = model(**batch)
                loss = model(**batch, mlm_labels=labels, nsp_labels=nsp).loss
            loss.backward()
            res[tag] = (logits.mlm_logits.float()[real], logits.nsp_logits.float(), loss.float(), grads(model))
        (fl, fn, floss, fg), (pl, pn, ploss, pg) = res["fast"], res["plain"]
        grad_rel, grad_worst = worst_gradient_relative({n: (fg[n], pg[n]) for n in pg})
        r = {
            "mlm_logits_relative": relative(fl, pl),
            "nsp_logits_relative": relative(fn, pn),
            "loss_relative": relative(floss, ploss),
            "worst_gradient_relative": grad_rel,
            "worst_gradient": grad_worst,
            "tolerance": {"outputs_relative": tol_out, "gradients_relative": tol_grad},
        }
        r["ok"] = max(r["mlm_logits_relative"], r["nsp_logits_relative"], r["loss_relative"]) <= tol_out and (
            grad_rel <= tol_grad
        )
        out[name] = r
    out["ok"] = all(r["ok"] for r in out.values() if isinstance(r, dict))
    return out


def vs_transformers(device: torch.device, quick: bool) -> dict:
    """bertkit vs transformers (sdpa) BertForPreTraining, same weights and batch, per model size and precision."""
    out: dict = {}
    for preset in ("mini",) if quick else ("mini", "base"):
        cfg = BertConfig.preset(preset, vocab_size=21128, **NO_DROPOUT)
        torch.manual_seed(0)
        ours = BertForPreTraining(cfg)
        with torch.no_grad():
            ours.mlm.bias.normal_()  # zeros at initialisation: a bias mapped wrongly would not show
        with tempfile.TemporaryDirectory() as d:
            ours.save_pretrained(d)
            ref = transformers.BertForPreTraining.from_pretrained(d, attn_implementation="sdpa")
        ours, ref = ours.to(device).train(), ref.to(device).train()
        batch, labels, nsp, _, _ = pretraining_batch(8 if quick else 32, 128, cfg.vocab_size)
        batch = {k: v.to(device) for k, v in batch.items()}
        labels, nsp = labels.to(device), nsp.to(device)
        real = batch["attention_mask"].bool()
        # fp32: 1e-5 on logits, scaled by the logits' size (they reach ~5 for a random model, where
        # float32 holds ~7 digits); bf16: both sides round every product's inputs to bf16, in different kernels.
        for name, bf16, tol_out, tol_grad in (("fp32", False, 1e-5, 1e-4), ("bf16", True, 2e-2, 5e-2)):
            ours.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
            with autocast(device, "bf16" if bf16 else "fp32"):
                o = ours(**batch)
                r = ref(**batch)
                o_loss = ours(**batch, mlm_labels=labels, nsp_labels=nsp).loss
                r_loss = ref(**batch, labels=labels, next_sentence_label=nsp).loss
            o_loss.backward(), r_loss.backward()
            a, b = o.mlm_logits.float()[real], r.prediction_logits.float()[real]
            scale = max(1.0, float(b.detach().abs().max()))
            ours_grads = grads(ours)
            ref_grads = {n: p.grad.cpu() for n, p in ref.named_parameters() if p.grad is not None}
            missing = sorted(set(ref_grads) - set(ours_grads))
            if missing:
                raise RuntimeError(f"gradients without a bertkit counterpart: {missing[:5]}")
            grad_rel, grad_worst = worst_gradient_relative({n: (ours_grads[n], ref_grads[n]) for n in ref_grads})
            res = {
                "mlm_logits_max_abs": max_abs(a, b),
                "mlm_logits_scale": scale,
                "mlm_logits_relative": relative(a, b),
                "nsp_logits_max_abs": max_abs(o.nsp_logits, r.seq_relationship_logits),
                "loss": [float(o_loss), float(r_loss)],
                "loss_relative": relative(o_loss.float(), r_loss.float()),
                "worst_gradient_relative": grad_rel,
                "worst_gradient": grad_worst,
            }
            if bf16:
                res["tolerance"] = {"outputs_relative": tol_out, "gradients_relative": tol_grad}
                nsp_rel = relative(o.nsp_logits.float(), r.seq_relationship_logits.float())
                res["ok"] = max(res["mlm_logits_relative"], nsp_rel, res["loss_relative"]) <= tol_out and (
                    grad_rel <= tol_grad
                )
            else:
                res["tolerance"] = {"logits_max_abs_over_scale": tol_out, "gradients_relative": tol_grad}
                nsp_scale = max(1.0, float(r.seq_relationship_logits.detach().abs().max()))
                res["ok"] = (
                    res["mlm_logits_max_abs"] <= tol_out * scale
                    and res["nsp_logits_max_abs"] <= tol_out * nsp_scale
                    and res["loss_relative"] <= tol_out
                    and grad_rel <= tol_grad
                )
            out[f"{preset}_{name}"] = res
    out["ok"] = all(r["ok"] for r in out.values() if isinstance(r, dict))
    return out


def finetune_parity(device: torch.device, quick: bool, work: Path) -> dict:
    """30 training steps of a sentence classifier, bertkit vs transformers: the same losses within 1e-4 (fp32)."""
    steps, batch_size = (10 if quick else 30), 8
    rows = read_classification(DATA / "sst2/train.tsv")[: steps * batch_size]
    corpus = work / "sst2_text.txt"
    corpus.write_text("\n".join(r.text_a for r in read_classification(DATA / "sst2/train.tsv")[:20000]))
    tok = Tokenizer.train([corpus], vocab_size=8000, show_progress=False)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=6,
                                  num_attention_heads=12, intermediate_size=1536, num_labels=2,
                                  **NO_DROPOUT)  # fmt: skip
    torch.manual_seed(0)
    model_dir = work / "minilm_shaped"
    transformers.BertForSequenceClassification(cfg).save_pretrained(model_dir)
    ref = transformers.BertForSequenceClassification.from_pretrained(model_dir, attn_implementation="sdpa")
    ours = BertForSequenceClassification.from_pretrained(model_dir)
    ours, ref = ours.to(device).train(), ref.to(device).train()
    batches = []
    for s in range(steps):
        chunk = rows[s * batch_size : (s + 1) * batch_size]
        b = tok.batch([r.text_a for r in chunk], max_length=128)
        b["labels"] = torch.tensor([int(r.label) for r in chunk])
        batches.append({k: v.to(device) for k, v in b.items()})

    losses = train_both(ours, ref, batches, lr=5e-5)
    worst = max(abs(a - b) if math.isfinite(a - b) else math.inf for a, b in losses)
    return {
        "steps": steps,
        "losses_bertkit_transformers": losses,
        "worst_loss_difference": worst,
        "tolerance": 1e-4,
        "ok": worst <= 1e-4,
    }


# ---------------------------------------------------------------------------------------------- bertkit pretrain runs
def small_data(work: Path) -> Path:
    """The Lu Xun corpus as 64-token pairs with a 3,000-piece vocabulary (what tests/test_pretrain.py trains on)."""
    corpus = [DATA / "pretrain_zh/luxun.txt"]
    Tokenizer.train(corpus, vocab_size=3000, show_progress=False).save_pretrained(work / "tok")
    prepare(corpus, work / "tok", work / "data", PrepareConfig(max_seq_length=64, seed=1), progress=False)
    return work / "data"


def pretrain(data: Path, out: Path, device: torch.device, steps: int, *extra: str) -> tuple[float, str]:
    """`bertkit pretrain` of the mini preset in a fresh process: its wall seconds and what it printed."""
    args = ["pretrain", "--data", str(data), "--model", "mini", "--out", str(out), "--max-steps", str(steps),
            "--batch-size", "32", "--log-every", "1", "--eval-every", "0", "--eval-instances", "64", "--workers", "0",
            "--seed", "3", "--learning-rate", "1e-3", "--dropout", "0", "--device", str(device), *extra]  # fmt: skip
    t = time.perf_counter()
    said = run_bertkit(*args, quiet=True)
    return time.perf_counter() - t, said


def train_losses(run: Path) -> dict[int, float]:
    """The training loss at each logged step of a run folder."""
    return {r["step"]: r["loss"] for r in read_metrics_log(run / "metrics.jsonl") if r.get("split", "train") == "train"}


def bf16_training(device: torch.device, quick: bool, data: Path, work: Path) -> dict:
    """50 pre-training steps in bf16 autocast vs fp32: the losses stay within a band of each other."""
    steps = 20 if quick else 50
    wall = {p: pretrain(data, work / f"run_{p}", device, steps, "--precision", p)[0] for p in ("fp32", "bf16")}
    fp32, bf16 = train_losses(work / "run_fp32"), train_losses(work / "run_bf16")
    rel = [abs(bf16[s] - fp32[s]) / fp32[s] if math.isfinite(bf16[s] - fp32[s]) else math.inf for s in sorted(fp32)]
    # bf16 keeps 8 bits of mantissa in each product's inputs; 50 AdamW steps from the same start drift apart by
    # about that rounding's effect on the updates: a band of 3% of the loss at any step, 1% on average.
    return {
        "steps": steps,
        "losses_fp32": [fp32[s] for s in sorted(fp32)],
        "losses_bf16": [bf16[s] for s in sorted(bf16)],
        "worst_relative_difference": max(rel),
        "mean_relative_difference": sum(rel) / len(rel),
        "tolerance": {"worst": 0.03, "mean": 0.01},
        "wall_seconds": wall,
        "ok": len(rel) == steps and max(rel) <= 0.03 and sum(rel) / len(rel) <= 0.01,
    }


def resume(device: torch.device, quick: bool, data: Path, work: Path) -> dict:
    """Save at step 20 of 40; the run folder cut back to that checkpoint and resumed equals the uninterrupted run."""
    steps, cut = (10, 5) if quick else (40, 20)
    whole, again, resumed = work / "resume_whole", work / "resume_again", work / "resume_cut"
    extra = ("--save-every", str(cut))
    pretrain(data, whole, device, steps, *extra)
    pretrain(data, again, device, steps, *extra)
    shutil.copytree(whole, resumed)
    # What the run had written at step `cut`: later checkpoints and the final model removed, `latest` pointing back.
    for ckpt in resumed.glob("checkpoint-*"):
        if ckpt.name != checkpoint_name(cut):
            shutil.rmtree(ckpt)
    shutil.rmtree(resumed / "model", ignore_errors=True)
    (resumed / LATEST).write_text(checkpoint_name(cut))
    _, said = pretrain(data, resumed, device, steps, *extra, "--resume")
    a, b, c = (train_losses(r) for r in (whole, again, resumed))
    wa, wb, wc = (load_file(r / "model/model.safetensors") for r in (whole, again, resumed))

    def weights_diff(x: dict, y: dict) -> float:
        return max(max_abs(x[k], y[k]) for k in x)

    loss_diff_resumed = max(abs(a[s] - c[s]) for s in a)
    loss_diff_again = max(abs(a[s] - b[s]) for s in a)
    res = {
        "steps": steps,
        "saved_and_resumed_at": cut,
        "same_steps_logged": sorted(a) == sorted(c),
        # Two uninterrupted runs are bitwise equal here, so a resume that started over would pass the comparison:
        # the resumed run must say where it resumed.
        "resumed_at_the_checkpoint": f"at step {cut}" in said,
        "bitwise_equal_weights_resumed": all(torch.equal(wa[k], wc[k]) for k in wa),
        "max_weight_difference_resumed": weights_diff(wa, wc),
        "max_loss_difference_resumed": loss_diff_resumed,
        # Two uninterrupted runs: how far CUDA's own non-determinism (atomic adds in backward) moves them apart.
        "bitwise_equal_weights_two_uninterrupted_runs": all(torch.equal(wa[k], wb[k]) for k in wa),
        "max_weight_difference_two_uninterrupted_runs": weights_diff(wa, wb),
        "max_loss_difference_two_uninterrupted_runs": loss_diff_again,
        "tolerance": "bitwise equal where two uninterrupted runs are; else within 10x their difference",
    }
    if res["bitwise_equal_weights_two_uninterrupted_runs"]:
        needed = ("same_steps_logged", "resumed_at_the_checkpoint", "bitwise_equal_weights_resumed")
        res["ok"] = all(res[k] for k in needed)
    else:
        floor = max(res["max_weight_difference_two_uninterrupted_runs"], 1e-12)
        res["ok"] = (
            res["same_steps_logged"]
            and res["resumed_at_the_checkpoint"]
            and res["max_weight_difference_resumed"] <= 10 * floor
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="smaller models and fewer steps (a dry run on the CPU)")
    ap.add_argument("--only", default=None, help="comma-separated check names")
    ap.add_argument("--out", default="benchmarks/results/cuda_checks.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        configure_cuda()  # as bertkit's trainer runs (cuDNN's attention off) ...
    # ... but plain float32 products for the fp32 checks (TF32 would round their inputs to 10 bits of mantissa).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results: dict = {"device": str(device), "quick": args.quick, "checks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_holder: dict[str, Path] = {}

        def data() -> Path:
            if "data" not in data_holder:
                data_holder["data"] = small_data(work / "small")
            return data_holder["data"]

        checks: dict[str, Callable[[], dict]] = {
            "fast_vs_plain": lambda: fast_vs_plain(device, args.quick),
            "vs_transformers": lambda: vs_transformers(device, args.quick),
            "finetune_parity": lambda: finetune_parity(device, args.quick, work),
            "bf16_training": lambda: bf16_training(device, args.quick, data(), work),
            "resume": lambda: resume(device, args.quick, data(), work),
        }
        names = args.only.split(",") if args.only else list(checks)
        for name in names:
            t = time.perf_counter()
            try:
                r = checks[name]()
            except Exception as e:  # recorded; the other checks still run
                r = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            r["seconds"] = round(time.perf_counter() - t, 1)
            results["checks"][name] = r
            print(f"{name}: {'ok' if r['ok'] else 'FAILED'} ({r['seconds']} s)", json.dumps(r)[:600], flush=True)
            write_result(args.out, results)
    failed = [n for n, r in results["checks"].items() if not r["ok"]]
    print("all checks ok" if not failed else f"failed: {', '.join(failed)}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
