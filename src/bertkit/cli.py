"""The `bertkit` command: one verb per pipeline stage (vocab -> ... -> embed), each a thin layer over the library.

Errors that come from bad input (`BertkitError`) print one line and exit with status 2; nothing already
written is left half-done because every output file is written to a temporary name and moved into place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from bertkit.errors import BertkitError

Handler = Callable[[argparse.Namespace], None]


def _cmd_vocab(args: argparse.Namespace) -> None:
    from bertkit.tokenizer import Tokenizer

    tok = Tokenizer.train(
        args.corpus, vocab_size=args.vocab_size, lowercase=args.lowercase, min_frequency=args.min_frequency
    )
    tok.save_pretrained(args.out)
    print(f"vocabulary of {tok.vocab_size} tokens written to {args.out}")


def _cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from bertkit.checkpoint import atomic_write
    from bertkit.data.corpus import read_lines
    from bertkit.infer import embed, embedding_settings, pick_device
    from bertkit.model import BertModel
    from bertkit.tokenizer import Tokenizer

    settings = embedding_settings(args.model)
    device = pick_device(args.device)
    model = BertModel.from_pretrained(args.model).to(device)
    tok = Tokenizer.from_pretrained(args.model)
    texts = sys.stdin.read().splitlines() if args.input == "-" else list(read_lines(args.input))
    if not texts:
        raise BertkitError(f"{args.input}: no lines to embed")
    vectors = embed(
        model,
        tok,
        texts,
        batch_size=args.batch_size,
        max_length=args.max_seq_length or settings["max_length"],
        pooling=args.pooling or settings["pooling"],
        normalize=not args.no_normalize,
        device=device,
        progress=True,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a temporary name
            np.save(f, vectors)

    atomic_write(out, write)
    print(f"{vectors.shape[0]} embeddings of size {vectors.shape[1]} written to {out}")


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from bertkit.tasks.quickstart import run_quickstart

    run_quickstart(Path(args.out), budget=args.budget, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertkit",
        description="BERT end to end: train a WordPiece vocabulary, pre-train, fine-tune, embed, serve. "
        "Model directories are Hugging Face BERT directories.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("vocab", help="learn a WordPiece vocabulary from a corpus")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--vocab-size", type=int, default=30522, help="target vocabulary size (default 30522)")
    p.add_argument("--out", required=True, metavar="DIR", help="tokenizer directory to write")
    p.add_argument(
        "--cased", dest="lowercase", action="store_false", help="keep case and accents (default: lower-case)"
    )
    p.add_argument("--min-frequency", type=int, default=2, help="rarest pair that may be merged (default 2)")
    p.set_defaults(func=_cmd_vocab)

    p = sub.add_parser("embed", help="sentence embeddings (mean pooling, L2-normalised) to a .npy file")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (bertkit or Hugging Face)")
    p.add_argument("--input", required=True, metavar="FILE|-", help="one text per line; - for standard input")
    p.add_argument("--out", required=True, metavar="FILE.npy", help="float32 array (lines x hidden size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="default: the model's own (sentence_bert_config.json)",
    )
    p.add_argument("--pooling", choices=["mean", "cls"], default=None, help="default: mean (or the model's)")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("quickstart", help="the end-to-end demo on the bundled Chinese data")
    p.add_argument("--out", default="runs/quickstart", metavar="DIR", help="where everything is written")
    p.add_argument("--budget", type=float, default=1.0, help="scale the work (0.1 = a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bertkit` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BertkitError as e:
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
