"""The `bertkit` command itself: flag checking, --version, a --help that does not wait for torch, prediction lines
that carry their input and are always valid JSON, and an `evaluate` that says what it evaluated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import run_in_process

from bertkit.cli import _json
from bertkit.data.task_files import TextExample
from bertkit.errors import BertkitError

MODEL, DATA, OUT = "no/such/model", "no/such/data", "no/such/out"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["finetune", "--task", "cls", "--model", MODEL, "--train", DATA, "--out", OUT, "--batch-size", "0"],
         "--batch-size"),
        (["finetune", "--task", "cls", "--model", MODEL, "--train", DATA, "--out", OUT, "--epochs", "0"], "--epochs"),
        (["finetune", "--task", "cls", "--model", MODEL, "--train", DATA, "--out", OUT, "--learning-rate", "-1e-4"],
         "--learning-rate"),
        (["finetune", "--task", "cls", "--model", MODEL, "--train", DATA, "--out", OUT, "--max-seq-length", "0"],
         "--max-seq-length"),
        (["pretrain", "--data", DATA, "--out", OUT, "--batch-size", "0"], "--batch-size"),
        (["pretrain", "--data", DATA, "--out", OUT, "--learning-rate", "0"], "--learning-rate"),
        (["pretrain", "--data", DATA, "--out", OUT, "--learning-rate", "nan"], "--learning-rate"),
        (["pretrain", "--data", DATA, "--out", OUT, "--max-steps", "-5"], "--max-steps"),
        (["pretrain", "--data", DATA, "--out", OUT, "--log-every", "0"], "--log-every"),
        (["pretrain", "--data", DATA, "--out", OUT, "--seed", "-1"], "--seed"),
        (["prepare", "--corpus", DATA, "--tokenizer", MODEL, "--out", OUT, "--eval-fraction", "1.5"],
         "--eval-fraction"),
        (["prepare", "--corpus", DATA, "--tokenizer", MODEL, "--out", OUT, "--max-seq-length", "3"],
         "--max-seq-length"),
        (["serve", "--model", MODEL, "--port", "70000"], "--port"),
        (["serve", "--model", MODEL, "--port", "-1"], "--port"),
        (["serve", "--model", MODEL, "--cors", "https://example.org/"], "--cors"),  # never equals an Origin header
        (["serve", "--model", MODEL, "--cors", "*"], "--cors"),
        (["serve", "--model", MODEL, "--cors", "https://Example.org"], "--cors"),  # browsers send lower case
        (["serve", "--model", MODEL, "--cors", "https://example.org:443"], "--cors"),  # ... and no default port
        (["embed", "--model", MODEL, "--input", DATA, "--out", OUT, "--batch-size", "0"], "--batch-size"),
        (["evaluate", "--model", MODEL, "--data", DATA, "--max-instances", "0"], "--max-instances"),
        (["fill-mask", "--model", MODEL, "--top-k", "0", "a [MASK]"], "--top-k"),
        (["quickstart", "--budget", "0"], "--budget"),
        (["quickstart", "--max-minutes", "-1"], "--max-minutes"),
        (["vocab", "--corpus", DATA, "--out", OUT, "--vocab-size", "ten"], "--vocab-size"),
    ],
)  # fmt: skip
def test_a_bad_count_is_one_line_and_exit_2(args: list[str], flag: str, bertkit) -> None:
    # Before the command runs at all, so nothing is read or written; the line names the flag and the valid range.
    status, _, err = bertkit(*args)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"bertkit {args[0]}: error: argument {flag}: "), err
    assert f"see bertkit {args[0]} --help" in err


def test_good_edge_values_are_accepted() -> None:
    from bertkit.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--model", MODEL, "--port", "0"]).port == 0  # 0: a free port
    assert parser.parse_args(["serve", "--model", MODEL, "--port", "65535"]).port == 65535
    for fraction in ("0", "1"):  # 1: an evaluation-only directory
        args = parser.parse_args(["prepare", "--corpus", DATA, "--tokenizer", MODEL, "--out", OUT, "--eval-fraction",
                                  fraction])  # fmt: skip
        assert args.eval_fraction == float(fraction)
    assert parser.parse_args(["pretrain", "--data", DATA, "--out", OUT, "--eval-every", "0"]).eval_every == 0
    prepare = ["prepare", "--corpus", DATA, "--tokenizer", MODEL, "--out", OUT]
    assert parser.parse_args([*prepare, "--workers", "0"]).workers == 0  # in this process, as it always was


def test_every_command_explains_itself_with_examples_that_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's --help says what it reads and writes and ends with example command lines; an example whose
    flags were renamed or dropped fails here, not in a user's shell."""
    import argparse
    import shlex

    from bertkit.cli import EXAMPLES, build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(EXAMPLES) == set(commands.choices)
    for name, command in commands.choices.items():
        text = command.format_help()
        assert command.description and len(command.description) > 80, name
        assert text.rstrip().endswith(EXAMPLES[name][-1]), name
        for example in EXAMPLES[name]:
            words = shlex.split(example.split(" | ")[-1])  # `echo ... | bertkit ...`: the bertkit part
            start = words.index(name)  # after `bertkit` or `torchrun ... -m bertkit.cli`
            try:
                args = parser.parse_args(words[start:])
            except SystemExit:
                pytest.fail(f"bertkit {name}'s example does not parse: {example}")
            assert args.command == name
    # Flags stay whole where a description wraps, on any width of terminal: --vocab-size, not "--vocab-" at the end
    # of one line and "size" on the next.
    import re

    for columns in range(40, 81):
        monkeypatch.setenv("COLUMNS", str(columns))
        for command in commands.choices.values():
            description = command.format_help().split("\n\n")[1]
            assert not re.search(r"-[a-z]+-$", description, re.M), (columns, description)


def test_version(bertkit) -> None:
    status, out, _ = bertkit("--version")
    assert status == 0
    assert out.strip() == f"bertkit {version('bertkit')}"


def test_help_does_not_import_torch() -> None:
    # `bertkit --help` took 2.3 s because importing the package imported torch; the parser needs none of it.
    code = "import sys, bertkit.cli; bertkit.cli.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"
    # ...while the package's public names still import as before (loaded on first use).
    code = "from bertkit import BertConfig, BertModel, BertForPreTraining, Tokenizer; print(BertModel.__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "BertModel"


def test_predict_lines_echo_their_input(tiny_task_models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    texts = ["这个宾馆比较陈旧了，特价的房间也很一般。", "", "房间很大，服务员也很热情，下次还会再来。"]
    src = tmp_path / "reviews.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    status, out, _ = bertkit("predict", "--model", tiny_task_models["cls"], "--input", src)
    assert status == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["line"], r["text"]) for r in rows] == [(1, texts[0]), (3, texts[2])]  # the blank line is skipped
    assert all({"label", "probabilities"} <= set(r) for r in rows)  # the prediction's keys are all still there

    text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"
    src = tmp_path / "ner.txt"
    src.write_text(text + "\n", encoding="utf-8")
    status, out, _ = bertkit("predict", "--model", tiny_task_models["ner"], "--input", src)
    assert status == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["text"] == text and row["line"] == 1 and len(row["tags"]) == len(text)
    assert all(row["text"][e["start"] : e["end"]] == e["text"] for e in row["entities"])  # offsets into the echo

    src = tmp_path / "qa.jsonl"
    src.write_text(json.dumps({"id": "q7", "question": "谁从另一个角度进行了解读？", "context": text}) + "\n")
    status, out, _ = bertkit("predict", "--model", tiny_task_models["qa"], "--input", src)
    assert status == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["id"] == "q7" and row["question"] == "谁从另一个角度进行了解读？" and "answer" in row

    from bertkit.tasks.classify import PairClassificationTask

    pair = TextExample("句子一", "句子二", None, 4)
    assert PairClassificationTask().echo(pair) == {"line": 4, "text_a": "句子一", "text_b": "句子二"}


@pytest.mark.parametrize("task", ["cls", "ner", "qa"])
def test_evaluate_and_predict_run_the_batch_size_asked_for(
    task: str, tiny_task_models: dict[str, Path], bertkit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bertkit.tasks.base as base

    sizes: list[int] = []  # rows of each forward pass
    pad_batch = base.pad_batch
    monkeypatch.setattr(base, "pad_batch", lambda rows, pad_id: sizes.append(len(rows)) or pad_batch(rows, pad_id))
    model = tiny_task_models[task]
    data = model.parent / {"cls": "cls.tsv", "ner": "ner.txt", "qa": "qa.json"}[task]  # the model's training file
    for command in ("evaluate", "predict"):
        sizes.clear()
        status, _, err = bertkit(command, "--model", model, "--data" if command == "evaluate" else "--input", data,
                                 "--batch-size", "3")  # fmt: skip
        assert status == 0, err
        assert sizes and max(sizes) == 3 and len(sizes) == -(-sum(sizes) // 3), (command, sizes)


def test_non_finite_outputs_are_an_error_not_invalid_json(tiny_task_models: dict[str, Path], tmp_path: Path,
                                                          bertkit) -> None:  # fmt: skip
    import torch

    from bertkit.model import BertForSequenceClassification

    # Finite weights so large that the logits overflow to infinity and the probabilities become NaN: `predict`
    # printed `NaN` (not JSON) with exit 0, and `evaluate` an accuracy computed from them.
    model_dir = tmp_path / "overflowing"
    shutil.copytree(tiny_task_models["cls"], model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        model.classifier.weight.fill_(3e38)
    model.save_pretrained(model_dir)
    src = tmp_path / "reviews.txt"
    src.write_text("房间很大。\n", encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    captured = bertkit("predict", "--model", model_dir, "--input", src, "--out", out)
    assert captured.status == 2
    assert captured.err.count("\n") == 1 and "outputs are not a finite number" in captured.err
    assert not out.exists() and captured.out == ""  # nothing half-written
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("text\tlabel\n房间很大。\t1\n", encoding="utf-8")
    captured = bertkit("evaluate", "--model", model_dir, "--data", labelled)
    assert captured.status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "outputs are not a finite number" in captured.err
    with pytest.raises(BertkitError, match="not a finite number"):
        _json({"mlm_loss": float("inf")}, "a metric")
    assert _json({"mlm_loss": 1.5, "text": "好"}, "a metric") == '{"mlm_loss": 1.5, "text": "好"}'


@pytest.fixture(scope="module")
def prepared(tiny_task_models: dict[str, Path], data_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Small prepared directories with the tiny model's tokenizer: one holding out a fifth of its documents, one
    holding out nothing."""
    root = tmp_path_factory.mktemp("prepared")
    lines = sorted((data_dir / "pretrain_zh").glob("*.txt"))[0].read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if line.strip()][:400]
    corpus = root / "corpus.txt"  # 100 documents of 4 lines
    corpus.write_text("\n\n".join("\n".join(lines[i : i + 4]) for i in range(0, 400, 4)) + "\n", encoding="utf-8")
    out = {}
    for name, fraction in (("split", "0.2"), ("no_eval", "0")):
        out[name] = root / name
        args = ["prepare", "--corpus", str(corpus), "--tokenizer", str(tiny_task_models["pretrained"]),
                "--out", str(out[name]), "--max-seq-length", "32", "--eval-fraction", fraction]  # fmt: skip
        assert run_in_process(*args).status == 0  # module-scoped: no capsys
    return out


def test_evaluate_says_which_split_and_how_many(tiny_task_models: dict[str, Path], prepared: dict[str, Path],
                                                 bertkit) -> None:  # fmt: skip
    data = prepared["split"]
    manifest = json.loads((data / "manifest.json").read_text())
    model = str(tiny_task_models["pretrained"])
    for split in ("eval", "train"):
        n = manifest["splits"][split]["instances"]
        captured = bertkit("evaluate", "--model", model, "--data", data, "--split", split)
        assert captured.status == 0
        assert f"evaluating the {split} split of {data}: {n:,} instances" in captured.err
        assert json.loads(captured.out.splitlines()[-1])["eval_instances"] == n
    docs = manifest["documents"]
    assert f"{docs['eval']:,}, 20% of the {docs['eval'] + docs['train']:,} documents, held out by prepare" in (
        _last_summary(bertkit, model, data, "--split", "eval")
    )
    n = manifest["splits"]["eval"]["instances"]
    assert f"the first 5 of its {n:,} instances (--max-instances 5; " in _last_summary(
        bertkit, model, data, "--max-instances", "5"
    )
    status, _, err = bertkit("evaluate", "--model", model, "--data", prepared["no_eval"])
    assert status == 2
    assert "the eval split of" in err and "has no instances" in err and "--split train" in err


def test_pretraining_data_is_evaluated_only_with_trained_heads(
    tiny_task_models: dict[str, Path], prepared: dict[str, Path], tmp_path: Path, bertkit
) -> None:
    # A model without the masked-LM head was evaluated with one initialised on the spot: random metrics, exit 0.
    import shutil

    from safetensors.torch import load_file, save_file

    def without(prefix: str, name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(tiny_task_models["pretrained"], out)
        tensors = load_file(out / "model.safetensors")
        save_file({k: v for k, v in tensors.items() if not k.startswith(prefix)}, out / "model.safetensors")
        return out

    data = prepared["split"]
    for model, what in ((tiny_task_models["cls"], "is a fine-tuned cls model"), (without("cls.", "enc"), "an encoder")):
        status, out, err = bertkit("evaluate", "--model", model, "--data", data)
        assert status == 2 and out == "" and what in err and "without a masked-LM head" in err, err
    # A masked-LM checkpoint without the NSP head (transformers' BertForMaskedLM): no NSP accuracy to report.
    status, out, err = bertkit("evaluate", "--model", without("cls.seq_relationship.", "mlm"), "--data", data)
    assert status == 0, err
    metrics = json.loads(out.splitlines()[-1])
    assert "nsp_accuracy" not in metrics and metrics["mlm_loss"] > 0
    status, out, _ = bertkit("evaluate", "--model", tiny_task_models["pretrained"], "--data", data)
    assert status == 0 and "nsp_accuracy" in json.loads(out.splitlines()[-1])


def _last_summary(bertkit, model: str, data: Path, *flags: str) -> str:
    status, _, err = bertkit("evaluate", "--model", model, "--data", data, *flags)
    assert status == 0
    return err


def test_evaluate_split_all(tiny_task_models: dict[str, Path], prepared: dict[str, Path], bertkit) -> None:
    from bertkit.data.pretraining import PretrainingData

    try:
        PretrainingData(prepared["split"], "all")
    except (KeyError, BertkitError):
        pytest.skip("PretrainingData does not read split='all' yet")
    manifest = json.loads((prepared["split"] / "manifest.json").read_text())
    n = sum(manifest["splits"][s]["instances"] for s in ("train", "eval"))
    args = ["evaluate", "--model", str(tiny_task_models["pretrained"]), "--data", str(prepared["split"])]
    status, _, err = bertkit(*args, "--split", "all", "--max-instances", "10")
    assert status == 0
    assert f"evaluating the all split of {prepared['split']}: the first 10 of its {n:,} instances" in err
    assert "all 100 documents, training and held out" in err


@pytest.mark.parametrize("command", ["predict", "embed", "fill-mask", "evaluate"])
def test_a_mistyped_model_folder_is_named_as_missing(tiny_task_models: dict[str, Path], tmp_path: Path, bertkit,
                                                     command: str) -> None:  # fmt: skip
    # `--model runs/x/modle` said "no vocab.txt ... is this a tokenizer or model directory?" (or "no config.json
    # at ..."): the folder does not exist, and the near name beside it is the likely one.
    typo = tiny_task_models["cls"].parent / "clss"
    src = tmp_path / "in.txt"
    src.write_text("房间很大。\n", encoding="utf-8")
    argv = {"predict": ["--input", str(src)], "embed": ["--input", str(src), "--out", str(tmp_path / "v.npy")],
            "fill-mask": ["今天[MASK]"], "evaluate": ["--data", str(src)]}[command]  # fmt: skip
    status, _, err = bertkit(command, "--model", typo, *argv)
    assert status == 2
    assert err.count("\n") == 1 and f"{typo} does not exist; did you mean" in err, err


def test_vocab_never_replaces_what_it_did_not_write(tiny_task_models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    # `vocab --out` a model directory replaced its vocab.txt (the model then reads other ids), exit 0.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("今天天气很好。\n我们去公园散步。\n" * 50, encoding="utf-8")
    model = tmp_path / "model"
    shutil.copytree(tiny_task_models["cls"], model)
    before = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    status, _, err = bertkit("vocab", "--corpus", corpus, "--vocab-size", "200", "--out", model)
    assert status == 2
    assert err.count("\n") == 1 and "not written by bertkit vocab" in err, err
    assert {p: p.read_bytes() for p in model.rglob("*") if p.is_file()} == before
    # The corpus's own folder is an input's folder; an earlier tokenizer is replaced only with --overwrite.
    status, _, err = bertkit("vocab", "--corpus", corpus, "--vocab-size", "200", "--out", tmp_path)
    assert status == 2
    assert "contains the input" in err
    tok = tmp_path / "tok"
    assert bertkit("vocab", "--corpus", corpus, "--vocab-size", "200", "--out", tok).status == 0
    status, _, err = bertkit("vocab", "--corpus", corpus, "--vocab-size", "200", "--out", tok)
    assert status == 2
    assert "already holds a tokenizer" in err
    (tok / ".vocab.txt.1a2b3c4d.tmp").write_text("half a vocab.txt: a run killed while writing it left this")
    assert bertkit("vocab", "--corpus", corpus, "--vocab-size", "200", "--out", tok, "--overwrite").status == 0
    assert not list(tok.glob(".*.tmp"))
    # A failed run leaves no folder behind.
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    assert bertkit("vocab", "--corpus", bad, "--out", tmp_path / "never").status == 2
    assert not (tmp_path / "never").exists()


def test_vocab_says_why_its_size_is_not_the_one_asked_for(tmp_path: Path, bertkit) -> None:
    # The trainer keeps every character (and its ## form) whatever --vocab-size says, and stops when no pair is
    # frequent enough: a vocabulary of another size was written with no word on why.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("今天天气很好。\n我们去公园散步。\n" * 50, encoding="utf-8")
    r = bertkit("vocab", "--corpus", corpus, "--vocab-size", "10", "--out", tmp_path / "small")
    n = len((tmp_path / "small/vocab.txt").read_text(encoding="utf-8").splitlines())
    assert r.status == 0 and n > 10
    assert f"vocabulary of {n} tokens written to {tmp_path / 'small'} (more than the 10 asked for" in r.out
    r = bertkit("vocab", "--corpus", corpus, "--vocab-size", "5000", "--out", tmp_path / "large")
    assert r.status == 0 and "(fewer than the 5,000 asked for: no other piece occurs at least --min-frequency" in r.out
    r = bertkit("vocab", "--corpus", corpus, "--vocab-size", str(n), "--out", tmp_path / "exact")
    assert r.status == 0 and r.out.strip().endswith(f"written to {tmp_path / 'exact'}")
    from helpers import run_bertkit  # a real process: the Rust trainer writes to file descriptor 1 itself

    r = run_bertkit("vocab", "--corpus", corpus, "--vocab-size", "10", "--out", tmp_path / "alone")
    assert r.status == 0 and r.out.count("\n") == 1 and r.out.startswith("vocabulary of"), repr(r.out)  # no blanks


@pytest.mark.parametrize("command", ["embed", "predict", "evaluate", "export"])
def test_a_file_output_never_replaces_what_the_command_did_not_ask_for(
    tiny_task_models: dict[str, Path], tmp_path: Path, bertkit, command: str
) -> None:
    # `embed --input in.txt --out in.txt` replaced the user's texts with the array, and every one of these commands
    # replaced any existing file given as --out, exit 0.
    model = tmp_path / "model"
    shutil.copytree(tiny_task_models["cls"], model)
    src = tmp_path / "in.tsv"
    src.write_text("text\tlabel\n房间很大。\t1\n", encoding="utf-8")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    inputs = {"embed": ["--input", str(src)], "predict": ["--input", str(src)], "evaluate": ["--data", str(src)],
              "export": ["--check-texts", str(src)]}[command]  # fmt: skip

    def run(out: Path, *flags: str):
        return bertkit(command, "--model", model, *inputs, "--out", out, *flags)

    refusals = {
        src: "is the input",  # the input itself, even with --overwrite
        model / "model.safetensors": "is a file of the input",  # a file of the model being read
        tmp_path: "contains the input",  # the folder that holds them
    }
    for out, said in refusals.items():
        for flags in ((), ("--overwrite",)):
            status, _, err = run(out, *flags)
            assert status == 2 and err.count("\n") == 1 and said in err, (out, flags, err)
    earlier = tmp_path / "earlier.out"
    earlier.write_text("the user's\n", encoding="utf-8")
    status, _, err = run(earlier)
    assert status == 2 and err.count("\n") == 1 and "earlier.out exists; add --overwrite" in err, err
    link = tmp_path / "link.out"
    link.symlink_to(earlier)
    status, _, err = run(link, "--overwrite")  # renaming over a link (or /dev/null) would replace the link itself
    assert status == 2 and err.count("\n") == 1 and "not a plain file" in err, err
    folder = tmp_path / "folder.out"
    folder.mkdir()
    status, _, err = run(folder, "--overwrite")
    assert status == 2 and "is a folder" in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()} == {
        **before,
        earlier: b"the user's\n",
    }
    for bad in ("-", f"{tmp_path / 'new'}/"):  # wrote a file named "-", or a file where a folder was named
        status, _, err = run(bad)  # type: ignore[arg-type]
        assert status == 2 and "give the path of a file to write" in err, err
    assert not (tmp_path / "new").exists() and not Path("-").exists()
    status, _, err = run(earlier, "--overwrite")  # asked for: replaced
    assert status == 0, err
    assert earlier.read_bytes() != b"the user's\n" and src.read_bytes() == before[src]
    # The model's weights reached through a link, as in a Hugging Face cache (snapshots link into blobs/).
    blob = tmp_path / "blobs" / "weights"
    blob.parent.mkdir()
    (model / "model.safetensors").rename(blob)
    (model / "model.safetensors").symlink_to(blob)
    status, _, err = run(blob, "--overwrite")
    assert status == 2 and "is a file of the input" in err, err
    assert blob.read_bytes() == before[model / "model.safetensors"]


def test_mistakes_a_user_makes_get_one_line_and_work_is_not_lost(
    tiny_task_models: dict[str, Path], tmp_path: Path, bertkit
) -> None:
    # Each of these gave a traceback, exit 0 with nothing done, or an answer to the wrong question.
    cls, ner, pretrained = (str(tiny_task_models[k]) for k in ("cls", "ner", "pretrained"))
    texts = tmp_path / "texts.txt"
    texts.write_text("房间很大。\n服务一般。\n", encoding="utf-8")
    labelled = tmp_path / "labelled.tsv"
    labelled.write_text("text\tlabel\n房间很大。\t1\n服务一般。\t0\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")

    def refused(*argv: str, says: str) -> None:
        status, out, err = bertkit(*argv)
        assert status == 2 and out == "" and says in err and err.count("\n") == 1 and "Traceback" not in err, err

    refused("fill-mask", "--model", pretrained, "--device", "gpu", "今天[MASK]", says="--device gpu: not a device")
    refused("predict", "--model", cls, "--input", empty, says="no inputs to predict")
    refused("evaluate", "--model", cls, "--data", labelled, "--max-instances", "5", says="for pre-training data")
    refused("predict", "--model", ner, "--input", labelled, says=f"{labelled}:1: a tab; this ner model reads one")
    refused("export", "--model", cls, "--out", tmp_path / "m.onnx", "--opset", "9", says="must be at least 17")
    # --out in a folder that does not exist yet: made, as embed and export make theirs.
    status, _, err = bertkit("predict", "--model", cls, "--input", texts, "--out", tmp_path / "new/p.jsonl")
    assert status == 0 and len((tmp_path / "new/p.jsonl").read_text().splitlines()) == 2
    assert f"2 predictions written to {tmp_path / 'new/p.jsonl'}" in err and "cls: 100%" in err  # and a bar
    status, out, _ = bertkit("evaluate", "--model", cls, "--data", labelled, "--out", tmp_path / "m/m.json")
    assert status == 0 and json.loads((tmp_path / "m/m.json").read_text()) == json.loads(out.splitlines()[-1])


def test_an_interrupt_inside_the_exporter_is_an_interrupt() -> None:
    # torch's exporter wraps a Ctrl-C in errors of its own: the command must still say "interrupted" (exit 130).
    from bertkit.export import _interrupted

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Failed to export the model with torch.export") from e
    except RuntimeError as wrapped:
        assert _interrupted(wrapped)
    assert not _interrupted(RuntimeError("a real failure"))


def test_what_the_system_refuses_is_one_line(tiny_task_models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    # A path through a file, a pipe as input, a full disk under standard output: each was a Python traceback.
    import os

    from helpers import bertkit_command

    src = tmp_path / "in.txt"
    src.write_text("好\n", encoding="utf-8")
    status, _, err = bertkit("predict", "--model", tiny_task_models["cls"], "--input", src, "--out", src / "x.jsonl")
    assert status == 1 and err.count("\n") == 1, err
    assert f"bertkit predict: error: File exists ({src}): a part of the path is a file, not a folder" in err, err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    status, _, err = bertkit("predict", "--model", tiny_task_models["cls"], "--input", fifo)
    assert status == 2 and f"{fifo} is not a regular file (a pipe or a device)" in err, err
    status, _, err = bertkit("embed", "--model", tiny_task_models["cls"] / "config.json", "--input", src,
                             "--out", tmp_path / "e.npy")  # fmt: skip
    assert status == 2 and "config.json is a file, not a model directory: give the folder" in err, err
    if Path("/dev/full").exists():  # Linux: every write fails for want of space
        with open("/dev/full", "w") as full:
            run = subprocess.run(bertkit_command("predict", "--model", tiny_task_models["cls"], "--input", src),
                                 stdout=full, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert run.returncode == 1 and "error: No space left on device: the disk is full" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_a_refusal_says_what_to_do_for_its_own_cause(tmp_path: Path) -> None:
    # Not every refusal is "check the path and the disk": too many open files or a failing disk need other steps.
    import errno
    import os

    from bertkit.files import describe_os_error

    codes = (errno.EMFILE, errno.ENFILE, errno.EIO, errno.EISDIR, errno.ENAMETOOLONG, errno.EACCES, errno.EBUSY)
    said = {code: describe_os_error(OSError(code, os.strerror(code), str(tmp_path / "x"))) for code in codes}
    assert "ulimit -n" in said[errno.EMFILE] and "close some programs" in said[errno.ENFILE]
    assert "dmesg" in said[errno.EIO] and "give a file" in said[errno.EISDIR] and "shorter" in said[errno.ENAMETOOLONG]
    assert said[errno.EBUSY].endswith(": check the path and the disk")  # anything else: the general advice
    assert all(str(tmp_path / "x") in line and "\n" not in line for line in said.values())
