"""Dynamic batching: the batcher's rules on a fake model (which requests share a batch, the token budget, the
oldest first, dropped and failed requests), then a served model: concurrent clients get the answers they get alone,
a client that leaves is not computed, and work per request is bounded (413)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from test_serve import assert_close, request, served

import bertkit.serve.service as service_module
from bertkit import BertModel
from bertkit.errors import BertkitError
from bertkit.machine import KERNEL_CACHE_ENV
from bertkit.serve import Service, running
from bertkit.serve.batching import UNPADDED_SLACK, Batcher, length_buckets, run_bucketed
from bertkit.serve.server import open_service
from bertkit.serve.service import check_precision


class FakeModel:
    """A runner that records each batch's payloads; `gate` holds the worker inside a batch until set."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, kind: str, payloads: list) -> list:
        self.gate.wait(10)
        self.batches.append(list(payloads))
        if "fail" in payloads:
            raise ValueError("this batch holds a failing input")
        return [f"{kind}:{p}" for p in payloads]


def hold_worker(model: FakeModel, batcher: Batcher) -> None:
    """Start a batch that waits at the gate, so the next jobs queue up behind it."""
    model.gate.clear()
    batcher.submit("x", "first", 1)
    for _ in range(500):
        if batcher.depth == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the worker never took the first job")


def test_batcher_groups_waiting_jobs_by_kind_within_the_token_budget() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=10, max_wait_ms=0)
    try:
        hold_worker(model, batcher)
        jobs = [batcher.submit("x", f"a{n}", 4) for n in range(3)]  # 12 tokens: two batches of budget 10
        other = batcher.submit("y", "b", 1)  # another kind never shares a batch
        model.gate.set()
        assert [j.future.result(10) for j in jobs] == ["x:a0", "x:a1", "x:a2"]
        assert other.future.result(10) == "y:b"
        assert model.batches == [["first"], ["a0", "a1"], ["a2"], ["b"]]
    finally:
        batcher.close()


def test_the_oldest_job_goes_first_and_one_over_the_budget_runs_alone() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=10, max_wait_ms=0)
    try:
        hold_worker(model, batcher)
        big = batcher.submit("x", "big", 1000)
        small = [batcher.submit("x", f"s{n}", 2) for n in range(3)]
        model.gate.set()
        for j in [big, *small]:
            j.future.result(10)
        # The long request holds the others for exactly one batch, then they share one.
        assert model.batches == [["first"], ["big"], ["s0", "s1", "s2"]]
    finally:
        batcher.close()


def test_cancelled_jobs_are_never_run_and_a_failing_batch_fails_only_its_culprit() -> None:
    model, dropped = FakeModel(), []
    batcher = Batcher(model, max_batch_tokens=100, max_wait_ms=0, on_drop=lambda: dropped.append(1))
    try:
        hold_worker(model, batcher)
        gone, kept, bad = (batcher.submit("x", p, 1) for p in ("gone", "kept", "fail"))
        assert gone.cancel()
        model.gate.set()
        assert kept.future.result(10) == "x:kept"
        with pytest.raises(ValueError, match="failing input"):
            bad.future.result(10)
        assert gone.future.cancelled() and dropped == [1]
        assert all("gone" not in b for b in model.batches)
        assert model.batches[1] == ["kept", "fail"] and model.batches[2:] == [["kept"], ["fail"]]  # retried alone
    finally:
        batcher.close()


def test_batching_off_runs_one_job_per_call() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=100, max_wait_ms=50, enabled=False)
    try:
        hold_worker(model, batcher)
        jobs = [batcher.submit("x", n, 1) for n in range(3)]
        model.gate.set()
        [j.future.result(10) for j in jobs]
        assert model.batches == [["first"], [0], [1], [2]]
    finally:
        batcher.close()


def test_a_client_alone_never_waits_and_concurrent_ones_wait_for_company() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch_tokens=100, max_wait_ms=400)
    try:
        start = time.monotonic()
        assert batcher.submit("x", "alone", 1).future.result(10) == "x:alone"
        assert time.monotonic() - start < 0.3  # no one else came: it ran at once, not after the 400 ms wait
        hold_worker(model, batcher)
        pair = [batcher.submit("x", p, 1) for p in ("a", "b")]
        model.gate.set()
        [j.future.result(10) for j in pair]  # a batch of two: clients come concurrently now
        start = time.monotonic()
        job = batcher.submit("x", "next", 1)
        time.sleep(0.1)
        late = batcher.submit("x", "late", 1)  # arrives within the wait: shares the batch
        assert job.future.result(10) == "x:next" and late.future.result(10) == "x:late"
        assert time.monotonic() - start >= 0.35
        assert model.batches[-1] == ["next", "late"]
    finally:
        batcher.close()


def test_the_worker_tidies_between_batches_at_most_every_interval(monkeypatch) -> None:
    import bertkit.serve.batching as batching

    model, tidied = FakeModel(), []
    monkeypatch.setattr(batching, "TIDY_EVERY_S", 0.5)
    batcher = Batcher(model, max_batch_tokens=100, max_wait_ms=0, tidy=lambda: tidied.append(model.batches[-1]))
    try:
        assert batcher.submit("x", "a", 1).future.result(10) == "x:a"
        assert tidied == []  # not yet TIDY_EVERY_S since the worker started
        time.sleep(0.6)
        for p in ("b", "c"):
            assert batcher.submit("x", p, 1).future.result(10) == f"x:{p}"
        assert tidied == [["b"]]  # after the batch, never inside it; then not again until the interval has passed
    finally:
        batcher.close()


def test_length_buckets_keep_padding_small_and_outputs_in_order() -> None:
    lengths = [100, 10, 12, 300, 11, 110, 9]
    groups = length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups == [[6, 1, 4, 2], [0, 5], [3]]  # 9..12 together, 100 and 110 together, 300 alone
    calls: list[list[int]] = []
    out = run_bucketed(lengths, lengths, lambda rows: (calls.append(rows), [-r for r in rows])[1])
    assert out == [-n for n in lengths] and len(calls) == 3
    # A model that unpads inside pads only attention: sentences of 5-55 tokens share one forward, a 512-token
    # window beside them runs apart.
    assert length_buckets([5, 55, 24, 512, 30], UNPADDED_SLACK) == [[0, 2, 4, 1], [3]]


def test_a_model_that_unpads_runs_a_batch_of_mixed_lengths_in_one_forward(tiny_task_models: dict[str, Path]) -> None:
    service = Service(tiny_task_models["cls"], device="cpu")
    try:
        calls: list[int] = []
        hook = service.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
        texts = ["好", "房间很大，服务员也很热情，下次还会再来。" * 3, "还行吧。"]
        service.batcher.call(
            lambda: service._run_batch("predict", [service.prepare_predict([{"text": t}])[1] for t in texts])
        )
        hook.remove()
    finally:
        service.close()
    assert calls == [3]


def test_the_model_is_loaded_and_run_on_the_worker_thread(tiny_task_models: dict[str, Path], monkeypatch) -> None:
    """One thread runs all of the server's PyTorch work: once two threads have run parallel operators, OpenMP
    stops spin-waiting and every operator of a small forward waits for a sleeping thread (about 2x slower)."""
    import bertkit.serve.service as service_module

    threads: list[str] = []
    opener = service_module.open_model_dir

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return opener(*args, **kwargs)

    monkeypatch.setattr(service_module, "open_model_dir", recording)
    service = Service(tiny_task_models["cls"])
    try:
        model = service.task_model.model
        hook = model.register_forward_hook(lambda *_: threads.append(threading.current_thread().name))
        service.predict([{"text": TEXTS[0]}])
        hook.remove()
    finally:
        service.close()
    assert threads == ["bertkit-batcher", "bertkit-batcher"]


@pytest.mark.parametrize("task", ["cls", "ner", "qa"])
def test_a_predict_request_is_encoded_once(tiny_task_models: dict[str, Path], task: str, monkeypatch) -> None:
    """The features made to price a request (its windows and tokens) are the ones the worker runs: the worker
    thread, which every request waits for, encodes nothing again."""
    body = {"question": "哪里？", "context": TEXTS[1] * 20} if task == "qa" else {"text": TEXTS[1] * 20}
    service = Service(tiny_task_models[task], device="cpu")
    try:
        calls: list[str] = []
        made = service.task_model.task.features

        def features(*args, **kwargs):
            calls.append(threading.current_thread().name)
            return made(*args, **kwargs)

        monkeypatch.setattr(service.task_model.task, "features", features)
        (answer,) = service.predict([body])
        monkeypatch.undo()
        assert_close(answer, service.task_model.predict([service.task_model.task.from_json(body)])[0], tol=1e-5)
    finally:
        service.close()
    assert calls == [threading.current_thread().name]


def test_the_model_leaves_the_cores_other_work_uses(tiny_task_models: dict[str, Path], monkeypatch) -> None:
    """Before each batch the worker sets its intra-op threads from the CPU other work used lately (measured by
    `CpuElsewhere`, replaced here by a fake that reports what the test says)."""
    import os

    import torch

    import bertkit.serve.service as service_module

    cpus = len(os.sched_getaffinity(0))
    reported: list[float | None] = [None]

    class FakeElsewhere:
        def cores(self) -> float | None:
            return reported[0]

    monkeypatch.setattr(service_module, "CpuElsewhere", FakeElsewhere)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    service = Service(tiny_task_models["cls"], device="cpu")
    try:

        def threads_after_a_batch(elsewhere: float | None) -> tuple[int, float]:
            reported[0] = elsewhere
            service.predict([{"text": TEXTS[0]}])
            return service.batcher.call(torch.get_num_threads), service.metrics.model_threads._value.get()

        assert threads_after_a_batch(None) == (2, 2)  # nothing measured yet: as opened
        assert threads_after_a_batch(cpus - 1.0) == (1, 1)  # all cores but one busy elsewhere
        assert threads_after_a_batch(cpus - 1.6) == (1, 1)  # not yet back
        assert threads_after_a_batch(0.0) == (2, 2)  # never more than it was opened with
        assert service.metrics.cpu_elsewhere._value.get() == 0.0
    finally:
        service.close()
        torch.set_num_threads(before)


def metric(url: str, name: str, **labels: str) -> float:
    """One sample's value from GET /metrics (0 when absent)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


TEXTS = [
    "这个宾馆比较陈旧了，特价的房间也很一般。",
    "房间很大，服务员也很热情，下次还会再来。",
    "还行吧。",
    "早餐太差了，无论去多少人，那边也不加食品的。酒店应该重视一下这个问题了。",
    "好",
    "位置不错，交通方便。",
]


@pytest.mark.parametrize("task", ["cls", "ner", "qa", "embed", "fill-mask"])
def test_concurrent_clients_get_the_answers_they_get_alone(tiny_task_models: dict[str, Path], task: str) -> None:
    """Answers computed in a batch of several clients equal those computed alone: same labels and offsets, floats
    within 1e-5 (a batch's padding and shape change float32 summation order; see test_serve.assert_close), from
    forward passes the requests share (one per length bucket); fill-mask's with each request's own top_k. A NER
    text and a QA context longer than the model's max_seq_length are read in several windows beside the short
    ones (their features, made once when the request is checked, are numbered anew in the batch)."""
    if task == "fill-mask":
        path = "/api/fill-mask"
        bodies = [
            {"texts": [t[:2] + "[MASK]" + t[3:], "[MASK]" + t[1:]], "top_k": 1 + n % 3} for n, t in enumerate(TEXTS)
        ]
    elif task == "qa":
        contexts = [*TEXTS[:3], "".join(TEXTS) * 6, *TEXTS[3:]]  # the long one: about 600 characters
        bodies = [{"question": "哪里？", "context": t, "id": str(n)} for n, t in enumerate(contexts)]
        path = "/api/predict"
    elif task == "ner":
        texts = [*TEXTS[:2], "叶老桂博士在北京工作。" * 30, *TEXTS[2:]]  # the long one: 330 characters
        path, bodies = "/api/predict", [{"text": t} for t in texts]
    elif task == "cls":
        path, bodies = "/api/predict", [{"text": t} for t in TEXTS]
    else:
        path, bodies = "/api/embed", [{"texts": [t, t[:2]]} for t in TEXTS]
    service = Service(tiny_task_models["pretrained" if task in ("embed", "fill-mask") else task], device="cpu")
    forwards = []
    model = service.mlm if task == "fill-mask" else service.encoder
    hook = model.register_forward_hook(lambda module, args, out: forwards.append(1))
    try:
        with running(service) as url:
            alone = [request(url + path, b) for b in bodies]
            forwards.clear()
            batches_before = metric(url, "bertkit_batch_size_count")
            # The worker is held busy until all the concurrent requests wait in its queue (on a busy machine they
            # might otherwise arrive one after another): then they share one model call.
            entered, gate = threading.Event(), threading.Event()
            holder = threading.Thread(target=service.batcher.call, args=(lambda: (entered.set(), gate.wait(60)),))
            holder.start()
            assert entered.wait(60)
            with ThreadPoolExecutor(len(bodies)) as pool:
                futures = [pool.submit(request, url + path, b) for b in bodies]
                deadline = time.monotonic() + 60
                while service.batcher.depth < len(bodies) and time.monotonic() < deadline:
                    time.sleep(0.01)
                gate.set()
                together = [f.result() for f in futures]
            holder.join()
            batches = metric(url, "bertkit_batch_size_count") - batches_before
    finally:
        hook.remove()
        service.close()
    assert all(status == 200 for status, _ in alone + together), together
    assert batches == 1  # all the requests shared one model call
    assert len(forwards) < len(bodies)  # one forward pass per length bucket, not one per request (or per text)
    for (_, a), (_, t) in zip(alone, together, strict=True):
        assert_close(t, a, tol=1e-5)


def test_a_fill_mask_batch_that_overflows_fails_only_the_request_that_caused_it(
    tiny_task_models: dict[str, Path], tmp_path: Path
) -> None:
    """Finite position embeddings so large from position 12 on that a longer text's activations overflow: a batch
    of two fill-mask requests, one of short texts and one with a long text, answers the short ones (as they are
    answered alone) and fails only the other, naming its text (a 500 for that client alone)."""
    from bertkit import BertForPreTraining
    from bertkit.errors import NonFiniteOutputError

    model_dir = tmp_path / "long_overflows"
    shutil.copytree(tiny_task_models["pretrained"], model_dir)
    model = BertForPreTraining.from_pretrained(model_dir)
    with torch.no_grad():
        model.bert.embeddings.position_embeddings.weight[12:] = 3e38
    model.save_pretrained(model_dir)
    service = Service(model_dir, device="cpu")
    try:
        short = service.prepare_fill_mask(["今天[MASK]好", "[MASK]天"], 3)
        long = service.prepare_fill_mask(["好[MASK]", "今天天气很[MASK]，我们不得不取消户外运动。"], 2)
        answers = service.batcher.call(lambda: service._run_batch("fill-mask", [short[1], long[1]]))
        alone = service.fill_mask(["今天[MASK]好", "[MASK]天"], 3)
    finally:
        service.close()
    assert answers[0] == alone  # exactly: after the failed batch each request runs alone, as here
    assert isinstance(answers[1], NonFiniteOutputError) and str(answers[1]).startswith(
        "the model computed NaN or infinite scores for texts[1], "
    ), answers[1]


def test_bf16_runs_large_batches_in_bf16_with_answers_near_fp32(tiny_task_models: dict[str, Path], monkeypatch) -> None:
    """--precision bf16: a request of many sentences runs its products in bf16 (a hook sees them), its probabilities
    within 0.02 of the fp32 server's (bf16 keeps 8 bits of mantissa: about 2**-8 relative per product) and its
    embeddings at cosine 0.999 or more; one short sentence, under `BF16_FROM_TOKENS` tokens, runs in fp32 as before.
    /api/info says which precision runs."""
    # Where the CPU only emulates bf16 it is slower, and rounds the same.
    monkeypatch.setattr(service_module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delenv(KERNEL_CACHE_ENV, raising=False)  # the service sets it: gone again after the test
    inputs, texts = [{"text": t} for t in TEXTS], [t for t in TEXTS if len(t) > 5]
    answers = {}
    for precision in ("fp32", "bf16"):
        service = Service(tiny_task_models["cls"], device="cpu", precision=precision)
        try:
            fc1 = next(m for m in service.task_model.model.modules() if isinstance(m, BertModel)).layers[0].ffn.fc1
            seen: list[torch.dtype] = []
            hook = fc1.register_forward_hook(lambda module, args, out, seen=seen: seen.append(out.dtype))
            many, one = service.predict(inputs), service.predict(inputs[-1:])
            hook.remove()
            answers[precision] = many, one, service.embed(texts), service.info()["precision"], seen
        finally:
            service.close()
    (many32, one32, vectors32, info32, _), (many16, one16, vectors16, info16, products) = answers.values()
    assert info32 == "fp32" and info16.startswith("bf16 for batches of")
    assert products == [torch.bfloat16, torch.float32]  # the request of many sentences, then the short one
    for got, want in zip(many16, many32, strict=True):
        for label, p in want["probabilities"].items():
            assert abs(got["probabilities"][label] - p) <= 0.02
    assert_close(one16, one32, tol=1e-5)
    cosines = torch.nn.functional.cosine_similarity(torch.tensor(vectors16), torch.tensor(vectors32), dim=-1)
    assert cosines.min() >= 0.999


def test_bf16_is_refused_where_it_would_be_slower_or_cannot_run(tiny_task_models: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setattr(service_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(BertkitError, match="needs a CPU with native bf16"):
        Service(tiny_task_models["cls"], device="cpu", precision="bf16")
    with pytest.raises(BertkitError, match="choose one of fp32, bf16"):
        check_precision("fp16", torch.device("cpu"))
    monkeypatch.setattr(service_module, "cpu_has_native_bf16", lambda: True)
    with pytest.raises(BertkitError, match="for the torch backend"):
        open_service(tiny_task_models["cls"], backend="onnx", onnx="model.onnx", precision="bf16")


@pytest.mark.parametrize("pipelined", [False, True], ids=["one request", "pipelined"])
def test_a_client_that_leaves_is_not_computed(tiny_task_models: dict[str, Path], pipelined: bool) -> None:
    service = Service(tiny_task_models["cls"], device="cpu")
    seen: list[str] = []
    run = service.batcher._run
    service.batcher._run = lambda kind, payloads: (seen.extend(map(str, payloads)), run(kind, payloads))[1]
    try:
        with running(service) as url:
            # Occupy the model's worker, then send a request and leave while it waits in the queue.
            hold = threading.Event()
            blocker = threading.Thread(target=service.batcher.call, args=(lambda: hold.wait(20),))
            blocker.start()
            body = json.dumps({"text": "一个离开的客户"}).encode()
            post = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
                s.sendall(post)
                for _ in range(100):  # until the request is read and queued
                    if service.batcher.depth:
                        break
                    time.sleep(0.02)
                if pipelined:  # its next request on the same connection, after the first was read: the server
                    s.sendall(post)  # stops reading the connection until it has answered the first
                    time.sleep(0.2)
            for _ in range(100):  # the server notices the closed connection and cancels the job
                if metric(url, "bertkit_requests_total", endpoint="/api/predict", status="499"):
                    break
                time.sleep(0.05)
            hold.set()
            blocker.join(20)
            status, _ = request(url + "/api/predict", {"text": "留下的客户"})
            assert status == 200
            assert metric(url, "bertkit_dropped_requests_total") == 1
            assert metric(url, "bertkit_requests_total", endpoint="/api/predict", status="499") == 1
    finally:
        service.close()
    assert not any("一个离开的客户" in s for s in seen) and any("留下的客户" in s for s in seen)


def test_work_per_request_is_bounded(tiny_task_models: dict[str, Path], tmp_path: Path) -> None:
    long_text = "叶老桂博士在北京工作。" * 300  # 3,300 characters: many windows of 128 tokens
    with served(tiny_task_models["ner"], max_windows=2) as url:
        status, out = request(url + "/api/predict", {"text": long_text})
        assert status == 413 and "at most 2 per input (--max-windows)" in out["error"], out
        status, out = request(url + "/api/predict", {"text": long_text[:100]})
        assert status == 200
    with served(tiny_task_models["qa"], max_windows=2) as url:
        status, out = request(url + "/api/predict", {"question": "谁？", "context": long_text})
        assert status == 413 and "inputs[0] needs at least" in out["error"] and "--max-windows" in out["error"], out
        # Within the bound from the context's length alone, but a long question leaves little room per window:
        # the windows the task's features count are refused too.
        body = {"question": "哪里是首都" * 12, "context": "北京是中华人民共和国的首都。" * 32}
        status, out = request(url + "/api/predict", body)
        assert status == 413 and re.search(r"inputs\[0\] needs \d+ windows", out["error"]), out
        status, out = request(url + "/api/predict", {**body, "context": body["context"][:40]})
        assert status == 200, out
    with served(tiny_task_models["pretrained"]) as url:
        status, out = request(url + "/api/fill-mask", {"text": long_text + "[MASK]"})
        assert status == 413 and "this model reads at most" in out["error"], out
        status, out = request(url + "/api/fill-mask", {"text": "[MASK]" + long_text})  # cut, its [MASK] kept
        assert status == 200 and len(out["results"][0]["masks"]) == 1 and out["results"][0]["truncated"] is True
        status, out = request(url + "/api/fill-mask", {"text": "今天[MASK]"})
        assert status == 200 and "truncated" not in out["results"][0], out
        # One [MASK] kept and one past the cut: answered for the first alone, 200 (the answer looked complete).
        status, out = request(url + "/api/fill-mask", {"text": "[MASK]" + long_text + "[MASK]"})
        assert status == 413 and "a [MASK] lies past the first" in out["error"], out
        status, out = request(url + "/api/embed", {"text": long_text})  # embeddings cut the text instead
        assert status == 200 and out["dim"] > 0


def test_a_long_text_is_counted_only_up_to_the_bound(tiny_task_models: dict[str, Path], data_dir: Path) -> None:
    """The window bound counts a text's tokens piece by piece: below the limit exactly as the whole text encodes
    (pieces end where the tokenizer splits anyway: white space, CJK characters), and it stops soon after the limit
    (a megabyte was encoded whole, over a second, before being refused)."""
    from bertkit.serve.server import open_service

    service = open_service(tiny_task_models["ner"])
    try:
        tok = service.tokenizer
        english = (data_dir / "pretrain_en/gutenberg_carroll-alice.txt").read_text(encoding="utf-8")[:30_000]
        chinese = (data_dir / "chnsenticorp/dev.tsv").read_text(encoding="utf-8")[:30_000]
        mixed = "x" * 5000 + " " + english[:9000] + chinese[:9000] + "é" * 1200 + "\t\n" + chinese[9000:14000]
        for text in (english, chinese.replace("\n", ""), mixed):
            exact = len(tok.encode(text, truncation=False).input_ids) - 2
            assert service._tokens_at_least(text, 10**9, piece=1000) == exact
        big = english * 40  # 1.2 MB
        counted = service._tokens_at_least(big, 2048)
        assert 2048 < counted < 2048 + 4 * 4096
    finally:
        service.close()


def test_serve_flags_refuse_bad_values(tiny_task_models: dict[str, Path], bertkit) -> None:
    for value in ("-1", "nan", "inf"):  # a finite wait only, as every number flag checks it
        r = bertkit("serve", "--model", tiny_task_models["cls"], "--max-wait-ms", value)
        assert r.status == 2 and "--max-wait-ms" in r.err and "must be at least 0" in r.err
    for flag, value in [("--backend", "tensorflow"), ("--batching", "maybe"), ("--max-batch-tokens", "0"),
                        ("--max-windows", "0"), ("--workers", "0"), ("--threads", "0"),
                        ("--precision", "fp16")]:  # fmt: skip
        r = bertkit("serve", "--model", tiny_task_models["cls"], flag, value)
        assert r.status == 2 and flag in r.err, (flag, r.err)
