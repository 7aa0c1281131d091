"""The server's Prometheus metrics (`GET /metrics`), in a registry of their own per application.

Each process of `--workers N` keeps its own counts (nothing is written to disk, so no shared multiprocess
directory): a scrape reads the process that answered it, labelled by `pid` in `bertkit_process_info`.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Requests and errors by endpoint and status, latency, batch rows and tokens, queue depth, model load time, and
    the model's threads beside the CPU other work uses."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bertkit_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("bertkit_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["endpoint", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("bertkit_request_seconds", "Time from request to answer", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_rows = Histogram("bertkit_batch_size", "Inputs per model batch", buckets=ROWS_BUCKETS, registry=r)
        self.batch_tokens = Histogram("bertkit_batch_tokens", "Tokens per model batch", buckets=TOKEN_BUCKETS,
                                      registry=r)  # fmt: skip
        self.queue_depth = Gauge("bertkit_queue_depth", "Requests waiting for the model", registry=r)
        self.dropped = Counter("bertkit_dropped_requests", "Requests dropped unrun because their client left",
                               registry=r)  # fmt: skip
        self.model_threads = Gauge("bertkit_model_threads", "Intra-op threads the model runs on now", registry=r)
        self.cpu_elsewhere = Gauge("bertkit_cpu_elsewhere_cores",
                                   "Cores' worth of CPU time other work used lately (other processes, the HTTP side)",
                                   registry=r)  # fmt: skip
        self.load_seconds = Gauge("bertkit_model_load_seconds", "Seconds the model took to load", registry=r)
        info = Gauge("bertkit_process_info", "This server process", ["pid"], registry=r)
        info.labels(pid=str(os.getpid())).set(1)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, rows: int, tokens: int) -> None:
        """Count one model batch."""
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
