"""`bertkit serve` at the HTTP level, on raw sockets where a client library would hide what is sent: keep-alive,
`Expect: 100-continue`, conflicting Content-Length, a refusal read before the body is sent, strict Host parsing,
escaped log lines, client disconnects without tracebacks, a burst of 100 connections, /metrics, /openapi.json,
/readyz and CORS."""

from __future__ import annotations

import http.client
import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import bertkit_command
from prometheus_client.parser import text_string_to_metric_families
from test_serve import request, served

from bertkit.serve.app import host_name


@pytest.fixture(scope="module")
def url(tiny_task_models: dict[str, Path]) -> Iterator[str]:
    with served(tiny_task_models["cls"]) as base:
        yield base


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw(url: str, data: bytes, read_until: bytes = b"}") -> bytes:
    """Send `data` on a fresh connection; what the server answered (until `read_until` or the connection ends)."""
    with socket.create_connection(("127.0.0.1", port(url)), timeout=30) as s:
        s.sendall(data)
        got = b""
        while read_until not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def test_keep_alive_serves_several_requests_on_one_connection(url: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port(url), timeout=30)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and json.loads(first.read()) == {"status": "ok"}
        sock = conn.sock
        body = json.dumps({"text": "房间很大。"})
        conn.request("POST", "/api/predict", body, {"Content-Type": "application/json"})
        second = conn.getresponse()
        assert second.status == 200 and "predictions" in json.loads(second.read())
        assert sock is not None and conn.sock is sock  # the same connection, not a new one
    finally:
        conn.close()


def test_a_kept_alive_connection_answers_without_the_delayed_ack_wait(url: str) -> None:
    """With Nagle's algorithm on the server's connections, each answer's body waited for the client's delayed ACK
    of its headers: every request took at least 40 ms (Linux), /healthz included. The fastest of ten must be far
    below that (the fastest, so that a busy machine cannot fail it; an answer here takes about a millisecond)."""
    conn = http.client.HTTPConnection("127.0.0.1", port(url), timeout=30)
    times = []
    try:
        for _ in range(10):
            start = time.perf_counter()
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    assert min(times) < 0.02, times


def test_expect_100_continue_is_answered_before_the_body(url: str) -> None:
    body = json.dumps({"text": "房间很大。"}, ensure_ascii=False).encode()
    head = (b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    with socket.create_connection(("127.0.0.1", port(url)), timeout=30) as s:
        s.sendall(head)
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        s.sendall(body)
        answer = b""
        while b"predictions" not in answer:
            chunk = s.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_conflicting_content_length_headers_are_refused(url: str) -> None:
    got = raw(url, b"POST /api/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 2\r\nContent-Length: 14\r\n\r\n{}")  # fmt: skip
    assert got.startswith(b"HTTP/1.1 400 ") and b"conflicting Content-Length" in got, got
    assert request(url + "/healthz")[0] == 200


def test_a_refused_request_body_still_arriving_does_not_reset_the_connection(url: str) -> None:
    # A client that sends its headers and then its body can find the server has already refused the headers. A
    # server that closes with the body unread makes the kernel answer with a reset, which can destroy the refusal
    # before the client reads it; the server instead ends its side and drains until the client closes.
    with socket.create_connection(("127.0.0.1", port(url)), timeout=30) as s:
        s.sendall(b"POST /api/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: -1\r\n\r\n")  # fmt: skip
        got = b""
        while chunk := s.recv(65536):  # the refusal, then end-of-stream
            got += chunk
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Content-Length must be a byte count" in got, got
        for _ in range(3):  # the rest of the body: a closed socket would answer the first part with a reset
            s.sendall(b"{}" * 1000)
            time.sleep(0.05)
    assert request(url + "/healthz")[0] == 200


def test_head_on_the_health_checks_and_the_page(url: str) -> None:
    # Uptime monitors send HEAD: it was 405. The answer has the GET's status and headers and no body, and the
    # kept-alive connection stays in step (a body sent anyway would be read as the next response).
    conn = http.client.HTTPConnection("127.0.0.1", port(url), timeout=30)
    for path in ("/healthz", "/readyz", "/"):
        conn.request("HEAD", path)
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b"" and int(head.getheader("Content-Length")) > 0, path
        conn.request("GET", path)
        got = conn.getresponse()
        assert got.status == 200 and len(got.read()) == int(head.getheader("Content-Length")), path
    conn.request("HEAD", "/api/predict")
    assert conn.getresponse().status == 405
    conn.close()


def test_host_header_is_parsed_strictly(url: str) -> None:
    assert host_name("localhost:8000") == "localhost" and host_name("[::1]:80") == "[::1]"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("LocalHost") == "localhost"
    for bad in ("localhost:80@evil.example", "localhost/evil", "local host", "", "localhost:", "a@localhost"):
        assert host_name(bad) is None, bad
    for host, code in [("localhost:80@evil.example", 403), ("evil.example:8000", 403), ("localhost.evil.example", 403),
                       ("localhost:8000", 200), ("[::1]:8000", 200), ("127.0.0.1", 200)]:  # fmt: skip
        status, out = request(url + "/healthz", headers={"Host": host})
        assert status == code, (host, out)
        if code == 403:
            assert "is not this server" in out["error"]
    got = raw(url, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 4"), got  # two Host headers: refused by the parser or by the check
    got = raw(url, b"GET /healthz HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave it out
    assert got.startswith(b"HTTP/1.1 403 ") and b"no Host header; send one" in got, got


def test_log_lines_escape_control_characters(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        raw(url, b"GET /x%1b%5b31mred%0d%0afake-line HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw(url, b"GET /raw\x1b[31m HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # refused by the parser
        raw(url, b"GET /q%22%20200%201.0%20ms%22 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # a quote ends no field
        time.sleep(0.2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "\\x1b[31mred\\x0d\\x0afake-line" in text, text
    assert '"GET /q\\x22 200 1.0 ms\\x22" 404' in text, text
    assert "\x1b" not in text and "\r" not in text and "fake-line\n" not in text


def test_a_client_that_disconnects_leaves_no_traceback(url: str, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"texts": ["房间很大。"] * 200}, ensure_ascii=False).encode()
    head = (
        b"POST /api/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    with caplog.at_level(logging.DEBUG):
        for sent in (body[:10], body):  # gone in the middle of the body; gone while its answer is computed
            with socket.create_connection(("127.0.0.1", port(url)), timeout=30) as s:
                s.sendall(head % len(body) + sent)
                time.sleep(0.1)
        time.sleep(0.5)
    assert request(url + "/healthz")[0] == 200
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()], caplog.text


def test_a_burst_of_100_connections_is_accepted_at_once(url: str) -> None:
    """100 clients connect together: each is accepted from the listen backlog in well under the 1 s a refused
    SYN waits before its retry, and each is answered."""
    start, results = threading.Barrier(100), []

    def client() -> None:
        start.wait()
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port(url)), timeout=30) as s:
            connected = time.perf_counter() - t0
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        results.append((connected, got.startswith(b"HTTP/1.1 200 ")))

    threads = [threading.Thread(target=client) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 100 and all(ok for _, ok in results)
    assert max(c for c, _ in results) < 0.9, sorted(c for c, _ in results)[-5:]


def test_metrics_are_prometheus_text(url: str) -> None:
    request(url + "/api/predict", {"text": "房间很大。"})
    request(url + "/api/predict", {"inputs": []})
    text = http.client.HTTPConnection("127.0.0.1", port(url), timeout=30)
    text.request("GET", "/metrics")
    response = text.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("bertkit_requests_total", (("endpoint", "/api/predict"), ("status", "200")))] >= 1
    assert samples[("bertkit_request_errors_total", (("endpoint", "/api/predict"), ("status", "400")))] >= 1
    assert samples[("bertkit_request_seconds_count", (("endpoint", "/api/predict"),))] >= 2
    assert samples[("bertkit_batch_size_count", ())] >= 1 and samples[("bertkit_batch_tokens_sum", ())] > 0
    assert ("bertkit_queue_depth", ()) in samples and samples[("bertkit_model_load_seconds", ())] > 0


def test_openapi_schema_and_docs(url: str) -> None:
    status, schema = request(url + "/openapi.json")
    assert status == 200 and schema["openapi"].startswith("3.")
    for path in ("/api/predict", "/api/embed"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["type"] == "object" and body["properties"], path
    assert "/api/fill-mask" not in schema["paths"]  # a classifier has no masked-LM head: not offered in /docs
    assert {"/api/info", "/healthz", "/readyz", "/metrics"} <= schema["paths"].keys()
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    status, page = request(url + "/docs")
    assert status == 200 and "openapi.json" in page
    # The page's scripts come from this server, never from a CDN (blank on a machine without internet access).
    sources = [u for u in re.findall(r'(?:src|href)="([^"]+)"', page) if not u.startswith("data:")]
    assert sorted(sources) == ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"], sources
    for path, kind in (("/docs/swagger-ui-bundle.js", "text/javascript"), ("/docs/swagger-ui.css", "text/css")):
        with urllib.request.urlopen(url + path, timeout=30) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(kind) and len(r.read()) > 10_000
    assert request(url + "/docs/../../etc/passwd")[0] == 404 and request(url + "/docs/page.html")[0] == 404


def test_readyz_says_whether_the_model_computes(url: str, tiny_task_models: dict[str, Path], tmp_path: Path) -> None:
    status, out = request(url + "/readyz")
    assert status == 200 and out == {"status": "ready"}
    from bertkit import BertForPreTraining

    broken = tmp_path / "overflowing"
    shutil.copytree(tiny_task_models["pretrained"], broken)
    model = BertForPreTraining.from_pretrained(broken)
    with torch.no_grad():
        model.bert.embeddings.ln.weight.fill_(3e38)  # finite weights whose activations overflow
    model.save_pretrained(broken)
    with served(broken) as bad:
        status, out = request(bad + "/readyz")
        assert status == 503 and "NaN or infinite" in out["error"], out
        assert request(bad + "/healthz")[0] == 200  # alive, not ready


def test_cors_only_for_the_named_origin(url: str, tiny_task_models: dict[str, Path]) -> None:
    def allowed(base: str, origin: str) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", port(base), timeout=30)
        conn.request("GET", "/api/info", headers={"Origin": origin})
        response = conn.getresponse()
        response.read()
        return response.getheader("Access-Control-Allow-Origin")

    assert allowed(url, "https://example.org") is None  # no --cors: no cross-origin reads
    with served(tiny_task_models["cls"], cors="https://example.org") as base:
        assert allowed(base, "https://example.org") == "https://example.org"
        assert allowed(base, "https://evil.example") is None


def test_workers_run_that_many_processes(tiny_task_models: dict[str, Path]) -> None:
    command = bertkit_command("serve", "--model", tiny_task_models["cls"], "--port", "0", "--workers", "2",
                              "--threads", "1")  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "serving" in line, line
        base = line.split(" at ")[1].split(" ")[0].rstrip("/")
        for _ in range(600):  # the workers load the model; the backlog holds the request meanwhile
            children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True)
            if len(children.stdout.split()) >= 2:
                break
            time.sleep(0.05)
        status, out = request(base + "/api/predict", {"text": "房间很大。"})
        assert status == 200 and out["predictions"][0]["label"] in ("0", "1")
        workers = subprocess.run(["ps", "-ww", "-o", "args=", "--ppid", str(proc.pid)], capture_output=True, text=True)
        assert sum("spawn_main" in a for a in workers.stdout.splitlines()) == 2, workers.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert proc.returncode == 0 and "Traceback" not in stderr
    assert "leaked" not in stderr, stderr  # a worker stopped by its parent leaves no semaphore behind
