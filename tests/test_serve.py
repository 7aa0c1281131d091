"""`bertkit serve` as a real client sees it: HTTP answers equal the reference (transformers, sentence-transformers)
or the `bertkit predict` CLI on the same inputs, and bad requests get a 4xx that says what was wrong."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bertkit_command

from bertkit import BertForPreTraining, Tokenizer
from bertkit.infer import fill_mask
from bertkit.model import BertForTokenClassification
from bertkit.serve import Service, running
from bertkit.serve.limits import MAX_INPUTS


@contextmanager
def served(model_dir: Path, cors: str | None = None, **options) -> Iterator[str]:
    """The model directory served on a free loopback port while the block runs; yields its base URL."""
    service = Service(model_dir, device="cpu", **options)
    try:
        with running(service, cors=cors) as url:
            yield url
    finally:
        service.close()


def request(
    url: str, body: object | None = None, raw: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict | str]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, payload, kind = r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        status, payload, kind = e.code, e.read(), e.headers["Content-Type"]
    return status, json.loads(payload) if kind.startswith("application/json") else payload.decode()


@pytest.fixture(scope="module")
def models(tiny_task_models: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """The shared tiny models, with a tagger that finds entities (in a copy: the shared one stays as it is)."""
    # Four steps teach the tagger nothing, so it would tag every character O and every entity check would compare
    # empty lists: make it call every character B-<type> instead (a head that ignores its input).
    out = {**tiny_task_models, "ner": tmp_path_factory.mktemp("serve") / "ner"}
    shutil.copytree(tiny_task_models["ner"], out["ner"])
    ner = BertForTokenClassification.from_pretrained(out["ner"])
    with torch.no_grad():
        ner.classifier.weight.zero_()
        ner.classifier.bias.copy_(torch.arange(ner.num_labels) == 1)  # label 1: the first B- tag
    ner.save_pretrained(out["ner"])
    return out


def assert_close(got: object, want: object, tol: float = 1e-6, where: str = "") -> None:
    """Equal structures (keys, lengths, labels, offsets) whose floats agree within `tol` absolute (probabilities)
    or 1e-5 relative (larger scores such as QA's logit sums). Floats from two separate model calls are never
    compared exactly: a different batch shape or thread count changes how the matmuls are blocked and summed, so the
    same input's outputs can differ in the last bits (seen: 0.4734402596950531 alone vs 0.4734402894973755 in a
    batch of two, float32 rounding)."""
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and isinstance(want, (int, float)), (where, got, want)
        assert got == pytest.approx(want, rel=1e-5, abs=tol), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (where, got, want)
        for k in want:
            assert_close(got[k], want[k], tol, f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, tol, f"{where}[{i}]")
    else:
        assert got == want, (where, got, want)


def test_predict_equals_transformers_and_the_cli(models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    import transformers

    texts = ["这个宾馆比较陈旧了，特价的房间也很一般。", "房间很大，服务员也很热情，下次还会再来。"]
    with served(models["cls"]) as url:
        status, info = request(url + "/api/info")
        assert status == 200 and info["task"] == "cls" and info["labels"] == ["0", "1"]
        assert info["endpoints"] == ["/api/predict", "/api/embed"]
        status, out = request(url + "/api/predict", {"inputs": [{"text": t} for t in texts]})
        assert status == 200
        one = request(url + "/api/predict", {"text": texts[0]})[1]  # a single input may come alone
        assert_close(one["predictions"][0], out["predictions"][0])  # alone vs in a batch of two: see assert_close
    ref = transformers.BertForSequenceClassification.from_pretrained(models["cls"]).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(models["cls"])
    with torch.no_grad():
        probs = ref(**hf_tok(texts, return_tensors="pt", padding=True)).logits.softmax(-1)
    for row, p in zip(out["predictions"], probs.tolist(), strict=True):
        assert row["label"] == str(int(np.argmax(p)))
        assert [row["probabilities"][k] for k in ("0", "1")] == pytest.approx(p, abs=1e-5)

    text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"
    qa = {"id": "q1", "question": "谁从另一个角度进行了解读？", "context": text}
    for task, body, stdin, suffix in [("ner", {"text": text}, text, ".txt"), ("qa", qa, json.dumps(qa), ".jsonl")]:
        with served(models[task]) as url:
            status, out = request(url + "/api/predict", {"inputs": [body]})
        assert status == 200, out
        src = tmp_path / f"{task}{suffix}"
        src.write_text(stdin + "\n", encoding="utf-8")
        cli = bertkit("predict", "--model", models[task], "--input", src)
        assert cli.status == 0, cli.err[-2000:]
        (line,) = [json.loads(x) for x in cli.out.splitlines()]
        echoed = {"ner": {"line": 1, "text": text}, "qa": {"question": qa["question"]}}[task]
        assert {k: line.pop(k) for k in echoed} == echoed  # the CLI's lines also carry their input
        assert_close(line, out["predictions"][0])  # another model load and batch: see assert_close
        if task == "ner":
            entities = out["predictions"][0]["entities"]
            assert len(entities) == len(text) and all(text[e["start"] : e["end"]] == e["text"] for e in entities)
            # Each entity's score: the probability of its tag (one character, one word, one token here), as
            # transformers' token classifier gives it.
            ref = transformers.BertForTokenClassification.from_pretrained(models["ner"]).eval()
            with torch.no_grad():
                ids = transformers.AutoTokenizer.from_pretrained(models["ner"])(text, return_tensors="pt")
                probs = ref(**ids).logits.softmax(-1)[0]
            assert ids["input_ids"].shape[1] == len(text) + 2
            want = [probs[1 + e["start"]].max().item() for e in entities]
            assert [e["score"] for e in entities] == pytest.approx(want, abs=1e-5)
    answer = out["predictions"][0]
    assert (answer["answer"] == text[answer["start"] : answer["end"]]) if answer["answer"] else answer["score"] is None

    with served(models["qa"]) as url:  # two questions with one id: each still gets the answer from its own passage
        contexts = ["北京是中华人民共和国的首都。", "东京是日本的首都，也是日本最大的城市。"]
        inputs = [{"id": "same", "question": "哪里是首都？", "context": c} for c in contexts]
        status, out = request(url + "/api/predict", {"inputs": inputs})
    assert status == 200 and [p["id"] for p in out["predictions"]] == ["same", "same"]
    for p, c in zip(out["predictions"], contexts, strict=True):
        assert p["answer"] == c[p["start"] : p["end"]] if p["answer"] else p["start"] is None


def test_fill_mask_and_embed(models: dict[str, Path], minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    text = "今天天气很[MASK]，我们不得不取消户外运动。"
    with served(models["pretrained"]) as url:
        status, info = request(url + "/api/info")
        assert info["task"] is None and info["endpoints"] == ["/api/fill-mask", "/api/embed"]
        status, out = request(url + "/api/fill-mask", {"texts": [text], "top_k": 3})
    assert status == 200
    model = BertForPreTraining.from_pretrained(models["pretrained"])
    expected = fill_mask(model, Tokenizer.from_pretrained(models["pretrained"]), text, top_k=3)
    got = out["results"][0]["masks"][0]
    assert [g["token"] for g in got] == [t for t, _ in expected[0]]
    assert [g["score"] for g in got] == pytest.approx([p for _, p in expected[0]], abs=1e-6)

    # The last text is longer than the model's 256 tokens: cut as sentence-transformers cuts it, and said so.
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "这家酒店的服务很好。", "long " * 300]
    with served(minilm_dir) as url:
        status, info = request(url + "/api/info")
        assert info["endpoints"] == ["/api/embed"]  # a sentence-transformers directory: no MLM head, no task
        status, out = request(url + "/api/embed", {"texts": sentences})
        short = request(url + "/api/embed", {"texts": sentences[:3]})[1]
        bad = request(url + "/api/fill-mask", {"texts": ["a [MASK] b"]})
        # A body over 4 KB is checked and tokenized in a thread, a smaller one on the event loop: the same answer.
        padded = json.dumps({"texts": sentences}).replace(",", "," + " " * 2048).encode()
        assert len(padded) > 4096
        status_padded, out_padded = request(url + "/api/embed", raw=padded)
    assert status == 200 and out["dim"] == 384
    assert out["truncated"] == [3] and out_padded["truncated"] == [3] and "truncated" not in short
    # Within float32 rounding, not exactly: the two forwards may run on different thread counts (`ThreadChoice`).
    assert status_padded == 200 and np.abs(np.array(out_padded["embeddings"]) - out["embeddings"]).max() < 1e-6
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences, convert_to_numpy=True)
    ours = np.array(out["embeddings"])
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99999
    assert bad[0] == 400 and "no masked-LM head" in bad[1]["error"]


def test_bad_requests_say_what_was_wrong(models: dict[str, Path]) -> None:
    with served(models["qa"]) as url:
        cases = [
            (
                "/api/predict",
                {"inputs": [{"question": "谁？"}]},
                400,
                "inputs[0]: 'context' must be a non-empty string",
            ),
            ("/api/predict", {"inputs": ["谁？"]}, 400, 'expected an object like {"question": "...", "context"'),
            ("/api/predict", {"inputs": []}, 400, "inputs must be a non-empty list"),
            ("/api/predict", {"inputs": [{"question": "q", "context": "c"}] * (MAX_INPUTS + 1)}, 400, "at most"),
            ("/api/predict", [1, 2], 400, "expected a JSON object"),
            ("/api/embed", {"texts": ["ok", 3]}, 400, "texts[1] must be a non-empty string"),
            ("/api/embed", {"sentences": ["ok"]}, 400, "field 'sentences' is not read here; send {\"texts\""),
            ("/api/embed", {"texts": ["a"], "text": "b"}, 400, 'send "texts" or "text", not both'),
            ("/api/embed", {}, 400, 'expected {"texts"'),
            # A misspelt field is named, not ignored.
            ("/api/predict", {"inputs": [{"question": "q", "contxt": "c"}]}, 400, "inputs[0]: field 'contxt' is not"),
            ("/api/predict", {"inputs": [{"question": "q", "context": "c"}], "top_k": 2}, 400, "field 'top_k' is"),
            ("/api/fill-mask", {"texts": ["a [MASK]"], "topk": 2}, 400, "field 'topk' is not read here"),
            ("/api/fill-mask", {"texts": ["a [MASK]"]}, 400, "no masked-LM head"),
            ("/api/nothing", {}, 404, "this model answers /api/predict, /api/embed"),
        ]
        for path, body, code, message in cases:
            status, out = request(url + path, body)
            assert status == code and message in out["error"], (path, body, out)
        status, out = request(url + "/api/predict", raw=b"{not json")
        assert status == 400 and "not UTF-8 JSON" in out["error"]
        status, out = request(url + "/api/predict", raw=b"  ")
        assert status == 400 and "the request body is empty" in out["error"]
        status, out = request(url + "/api/predict", raw=b'{"question": 1' + b"0" * 5000 + b"}")
        assert status == 400 and "a number of more than 4,300 digits" in out["error"]  # Python's limit
        # A bad value of a megabyte is named in a line, not repeated whole.
        status, out = request(url + "/api/embed", {"texts": [["x" * 1_000_000]]})
        assert status == 400 and "texts[0] must be a non-empty string" in out["error"] and len(out["error"]) < 200
        status, out = request(url + "/api/embed", raw=b'{"texts": ["a\\ud800b"]}')  # a lone surrogate
        assert status == 400 and "not valid Unicode" in out["error"]
        status, out = request(url + "/api/embed", raw=b"[" * 100_000 + b"]" * 100_000)
        assert status == 400 and "nested too deeply" in out["error"]
        status, out = request(url + "/api/embed", {"texts": ["ok"]}, headers={"Content-Type": "text/plain"})
        assert status == 415 and "application/json" in out["error"]  # a cross-site form post cannot send JSON
        latin = "café".encode("latin-1")  # also valid UTF-8 in other cases (e.g. "Ã©"): read as the client says, or not
        status, out = request(url + "/api/embed", raw=b'{"texts": ["' + latin + b'"]}',
                              headers={"Content-Type": "application/json; charset=ISO-8859-1"})  # fmt: skip
        assert status == 415 and "charset='iso-8859-1'" in out["error"] and "UTF-8" in out["error"], out
        for declared in ("application/json; charset=UTF-8", 'application/json;charset="utf-8"', "Application/JSON",
                         "application/json; charset=us-ascii"):  # fmt: skip
            status, out = request(url + "/api/embed", {"texts": ["ok"]}, headers={"Content-Type": declared})
            assert status == 200, (declared, out)
        status, out = request(url + "/api/info", headers={"Host": "evil.example:8000"})
        assert status == 403  # DNS rebinding: another site's name pointing at 127.0.0.1
        status, out = request(url + "/api/embed", raw=b"{}", headers={"Content-Length": "-1"})
        assert status == 400 and "Content-Length must be a byte count" in out["error"]
        status, out = request(url + "/api/predict")  # GET on a POST route
        assert status == 405
        status, page = request(url + "/")
        assert status == 200 and "/api/info" in page and "<script>" in page
        status, out = request(url + "/healthz")
        assert status == 200 and out == {"status": "ok"}  # and still serving after every error above


def test_predict_out_file_is_replaced_only_when_complete(models: dict[str, Path], tmp_path: Path, bertkit) -> None:
    out = tmp_path / "answers.jsonl"
    out.write_text("earlier answers\n", encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "谁？", "context": "叶老桂。"}\n{"question": "谁？"}\n', encoding="utf-8")
    r = bertkit("predict", "--model", models["qa"], "--input", bad, "--out", out, "--overwrite")
    assert r.status == 2 and "bad.jsonl:2: 'context' must be a non-empty string" in r.err
    assert out.read_text(encoding="utf-8") == "earlier answers\n"
    good = tmp_path / "good.jsonl"
    good.write_text(bad.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    r = bertkit("predict", "--model", models["qa"], "--input", good, "--out", out)
    assert r.status == 2 and "answers.jsonl exists; add --overwrite" in r.err
    assert out.read_text(encoding="utf-8") == "earlier answers\n"
    r = bertkit("predict", "--model", models["qa"], "--input", good, "--out", out, "--overwrite")
    assert r.status == 0 and r.out == ""
    assert json.loads(out.read_text(encoding="utf-8"))["id"] == "1"


def test_serve_command(models: dict[str, Path], minilm_dir: Path, bertkit) -> None:
    r = bertkit("serve", "--model", models["cls"].parent / "missing")
    assert r.status == 2 and "does not exist" in r.err
    r = bertkit("fill-mask", "--model", minilm_dir, "a [MASK] b")
    assert r.status == 2 and "no masked-LM head" in r.err
    # Serving runs until stopped: a process, read while it runs.
    command = bertkit_command("serve", "--model", models["ner"], "--port", "0")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "serving" in line and "a ner model" in line, line + proc.stderr.read()  # type: ignore[union-attr]
        url = line.split(" at ")[1].split(" ")[0].rstrip("/")
        status, out = request(url + "/api/predict", {"text": "叶老桂博士在北京。"})
        assert status == 200 and len(out["predictions"][0]["tags"]) == len("叶老桂博士在北京。")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_port_in_use_is_one_line_before_the_model_loads(
    models: dict[str, Path], bertkit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from bertkit.serve import server

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(server, "open_service", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = bertkit("serve", "--model", models["cls"], "--port", port)
    assert r.status == 2 and r.err.count("\n") == 1, r.err  # uvicorn's own log line of the failure is not shown
    assert r.err.startswith(f"bertkit serve: error: cannot listen on 127.0.0.1:{port} (Address already in use)")


PAGE = Path(__file__).parents[1] / "src/bertkit/serve/page.html"


def page_shown(url: str, tmp_path: Path) -> dict:
    """What the page's own JavaScript shows against the server at `url`, run in node by page_harness.js (it fills
    in the page's example inputs and presses every visible button): {"info", "shown", and each section's HTML}."""
    script = tmp_path / "page.js"
    page = PAGE.read_text(encoding="utf-8")
    script.write_text(re.search(r"<script>(.*)</script>", page, re.S).group(1), encoding="utf-8")  # type: ignore[union-attr]
    harness = Path(__file__).parent / "page_harness.js"
    r = subprocess.run(["node", str(harness), url, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="the web page's script is run in node")
def test_web_page_script(models: dict[str, Path], tmp_path: Path) -> None:
    """The page's own JavaScript, run against the server: each model shows its sections and their results."""
    shown = {}
    for name in ("cls", "ner", "pretrained"):
        with served(models[name]) as url:
            shown[name] = page_shown(url, tmp_path)
            if name == "ner":
                text = "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。"  # the page's example
                entities = request(url + "/api/predict", {"text": text})[1]["predictions"][0]["entities"]
    assert shown["cls"]["shown"] == {"predict": True, "fill-mask": False, "embed": True}
    assert "label: <b>" in shown["cls"]["predict"] and shown["cls"]["predict"].count("<tr>") == 2
    assert "fine-tuned for cls" in shown["cls"]["info"] and "labels 0, 1" in shown["cls"]["info"]
    marked = re.findall(r"<mark [^>]*>(.*?)<small>(.*?)</small></mark>", shown["ner"]["predict"])
    assert marked == [(e["text"], e["type"]) for e in entities]
    assert re.sub(r"<small>.*?</small>|<[^>]+>", "", shown["ner"]["predict"]).startswith(text)  # text kept whole
    assert shown["pretrained"]["shown"] == {"predict": False, "fill-mask": True, "embed": True}
    assert shown["pretrained"]["fill-mask"].count("<tr>") == 5
    for name in shown:
        assert re.search(r"cosine similarity <b>-?[01]\.\d{4}</b>", shown[name]["embed"])


def test_a_model_that_overflows_is_a_server_error_not_a_bad_request(models: dict[str, Path], tmp_path: Path) -> None:
    # Finite weights so large that the encoder's activations overflow: the request was fine, the model is not, so
    # the answer is 500 with the reason (a 400 would send the client looking for a mistake in its request).
    from bertkit import BertForPreTraining

    model_dir = tmp_path / "overflowing"
    shutil.copytree(models["pretrained"], model_dir)
    model = BertForPreTraining.from_pretrained(model_dir)
    with torch.no_grad():
        model.bert.embeddings.ln.weight.fill_(3e38)
    model.save_pretrained(model_dir)
    with served(model_dir) as url:
        status, body = request(url + "/api/embed", {"texts": ["今天天气很好"]})
        assert status == 500 and "NaN or infinite" in body["error"], body
        status, body = request(url + "/api/fill-mask", {"texts": ["今天天气很[MASK]"]})
        assert status == 500 and "NaN or infinite" in body["error"], body
        assert request(url + "/healthz")[0] == 200  # still serving


def test_embed_answers_say_what_was_cut_as_the_cli_cuts_it(tmp_path: Path, bertkit) -> None:
    """A sentence-transformers config may name a length beyond the model's positions: the text is cut at the
    positions, and the server's answer says so, as `bertkit embed` does (it counted the text as whole)."""
    from bertkit import BertConfig, BertModel
    from bertkit.serve.server import open_service
    from bertkit.tokenizer import SPECIAL_TOKENS

    tok = Tokenizer([*SPECIAL_TOKENS, *"今天气很好"])
    torch.manual_seed(0)
    config = BertConfig.preset("tiny", vocab_size=len(tok.vocab), max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 128}', encoding="utf-8")
    texts = ["今天天气很好" * 16, "今天天气很好"]  # 98 and 8 tokens
    service = open_service(tmp_path, "cpu")
    try:
        answer = service.submit(service.prepare_embed(texts)).future.result()
    finally:
        service.close()
    assert answer["truncated"] == [0], answer.get("truncated")
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = bertkit("embed", "--model", tmp_path, "--input", tmp_path / "in.txt", "--out", tmp_path / "e.npy")
    assert r.status == 0 and "note: 1 of 2 texts" in r.err and "longer than 64 tokens" in r.err, r.err
    assert np.abs(np.load(tmp_path / "e.npy") - np.array(answer["embeddings"])).max() < 1e-5  # float32, thread counts
