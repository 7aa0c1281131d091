"""Dynamic batching across clients: requests queue, one worker thread forms batches and runs the model.

A request becomes a `Job` (its kind, its prepared payload and what it costs in tokens). The worker takes the oldest
waiting job and, when requests come concurrently (the last batch held several, or others wait already), waits at
most `max_wait_ms` for company while the queue holds fewer than `max_batch_tokens` tokens of that kind; a client
alone never waits. Then it fills the batch with the waiting jobs of the same kind whose lengths are closest to the
oldest one's (length buckets: little padding), up to the token budget. The oldest job always goes first, so no job
waits behind more than one batch of others, and a job larger than the budget runs alone. A job whose client has
gone (its future cancelled) is dropped before it is computed. The model call is one function over the batch's
payloads, so the same worker serves any backend. Between batches, at most every `TIDY_EVERY_S`, the worker runs
`tidy` (the service hands freed heap memory back to the system there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from bertkit.serve.limits import MAX_BATCH_TOKENS, MAX_WAIT_MS

# run(kind, payloads) -> one result per payload, in order; a result may be an exception, meant for that job alone.
BatchRunner = Callable[[str, Sequence[Any]], Sequence[Any]]
# Freed heap pages handed back by `tidy` are faulted in again as the next batches reuse their chunks, so a server's
# RSS rises between two tidies by what its batches churned through meanwhile: the shorter the interval, the lower
# that sawtooth (`python benchmarks/serving_load.py --only soak` watches RSS through a long run at 32 clients).
TIDY_EVERY_S = 2.0


@dataclass
class Job:
    """One request's work: `kind` (jobs batch only with their own kind), `payload` (what the runner takes), `tokens`
    (its cost against the batch budget) and `rows` (inputs it holds). Its answer arrives in `future`."""

    kind: str
    payload: Any
    tokens: int
    rows: int = 1
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    def cancel(self) -> bool:
        """Drop the job if it has not started (its client left); True when it will not be computed."""
        return self.future.cancel()


class Batcher:
    """A queue of jobs and the one worker thread that runs them in batches (see the module's docstring).

    `enabled=False` runs one job per model call, in arrival order (the comparison without batching). `on_batch`
    is told each batch's rows and tokens, `on_queue` the queue's depth, `on_drop` each job dropped unrun; `tidy`
    runs between batches at most every `TIDY_EVERY_S`."""

    def __init__(
        self,
        run: BatchRunner,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
        max_wait_ms: float = MAX_WAIT_MS,
        enabled: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        on_drop: Callable[[], None] | None = None,
        tidy: Callable[[], object] | None = None,
    ):
        self._run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.enabled = enabled
        self._on_batch, self._on_queue, self._on_drop = on_batch, on_queue, on_drop
        self._tidy, self._tidied = tidy, time.monotonic()
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._company = False  # whether the last batch held more than one job: clients come concurrently
        self._thread = threading.Thread(target=self._loop, name="bertkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, kind: str, payload: Any, tokens: int, rows: int = 1) -> Job:
        """Queue a job; its result (or exception) arrives in `job.future`."""
        job = Job(kind, payload, max(1, tokens), rows)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.append(job)
            self._queue_changed()
            self._cond.notify()
        return job

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the worker thread between batches (model calls stay on one thread) and return its result."""
        return self.submit("call", fn, 1).future.result()

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet taken into a batch)."""
        return len(self._pending)

    @property
    def alive(self) -> bool:
        """Whether the worker thread still runs."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the worker after the batch it is running; jobs still waiting are cancelled."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.future.cancel()
            self._pending.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _queue_changed(self) -> None:
        if self._on_queue:
            self._on_queue(len(self._pending))

    def _drop_cancelled(self) -> None:
        live = [j for j in self._pending if not j.future.cancelled()]
        if self._on_drop:
            for _ in range(len(self._pending) - len(live)):
                self._on_drop()
        self._pending[:] = live

    def _take(self) -> list[Job]:
        """The next batch (empty once closed)."""
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._closed:
                    return []
                if self._pending:
                    break
                self._cond.wait()
            head = self._pending[0]
            alike = sum(j.kind == head.kind for j in self._pending)
            if self.enabled and head.kind != "call" and (self._company or alike > 1):
                # A short wait for company, only while the queue holds less than one batch of this kind.
                while not self._closed:
                    queued = sum(j.tokens for j in self._pending if j.kind == head.kind)
                    left = head.enqueued + self.max_wait - time.monotonic()
                    if queued >= self.max_batch_tokens or left <= 0:
                        break
                    self._cond.wait(left)
                self._drop_cancelled()
                if not self._pending:
                    return []
                head = self._pending[0]
            batch, budget = [head], self.max_batch_tokens - head.tokens
            if self.enabled and head.kind != "call":
                others = sorted((j for j in self._pending[1:] if j.kind == head.kind),
                                key=lambda j: abs(j.tokens - head.tokens))  # fmt: skip
                for job in others:
                    if job.tokens <= budget:
                        batch.append(job)
                        budget -= job.tokens
            if head.kind != "call":
                self._company = len(batch) > 1
            taken = {id(j) for j in batch}
            self._pending[:] = [j for j in self._pending if id(j) not in taken]
            self._queue_changed()
            return batch

    def _loop(self) -> None:
        while not self._closed:
            batch = [j for j in self._take() if j.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            if batch[0].kind == "call":
                self._settle(batch, lambda b=batch: [b[0].payload()])
                continue
            if self._on_batch:
                self._on_batch(sum(j.rows for j in batch), sum(j.tokens for j in batch))
            self._settle(batch, lambda b=batch: self._run(b[0].kind, [j.payload for j in b]))
            if self._tidy and time.monotonic() - self._tidied >= TIDY_EVERY_S:
                self._tidy()
                self._tidied = time.monotonic()

    def _settle(self, batch: list[Job], compute: Callable[[], Sequence[Any]]) -> None:
        """Hand each job its result; when the batch fails as a whole, run its jobs one by one, so that one
        request's fault (e.g. a model that overflows on its input) is that request's answer only."""
        try:
            results = list(compute())
        except Exception as e:
            if len(batch) == 1:
                batch[0].future.set_exception(e)
                return
            for job in batch:
                self._settle([job], lambda j=job: self._run(j.kind, [j.payload]))
            return
        for job, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


# Buckets for a model that pads every input to its batch's longest: a bucket's longest at most 1.25 times its
# shortest plus 8 tokens.
PADDED_SLACK = (1.25, 8)
# A model that removes padding inside (bertkit's PyTorch encoder) pads only its attention's (B, nh, T, T) scores,
# a small part of the work while T stays near the batch's mean length: its buckets may span a far wider range of
# lengths, and fewer, larger forwards are faster (SST-2's short and long sentences share one forward).
UNPADDED_SLACK = (2.0, 64)


def length_buckets(lengths: Sequence[int], slack: tuple[float, int] = PADDED_SLACK) -> list[list[int]]:
    """The indices of `lengths` in groups that pad little when each is run as one padded batch: in ascending
    length, a group's longest at most `slack[0]` times its shortest plus `slack[1]` tokens. Padding a batch of
    mixed-length sentences to its longest can cost more than the batch saves."""
    factor, extra = slack
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[i] <= lengths[groups[-1][0]] * factor + extra:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def run_bucketed(
    rows: Sequence[Any],
    lengths: Sequence[int],
    run: Callable[[list], Sequence[Any]],
    slack: tuple[float, int] = PADDED_SLACK,
) -> list[Any]:
    """`run` over `rows` one length bucket at a time (see `length_buckets`; `slack` is its slack and extra tokens),
    its outputs back in input order."""
    out: list[Any] = [None] * len(rows)
    for group in length_buckets(lengths, slack):
        for i, result in zip(group, run([rows[i] for i in group]), strict=True):
            out[i] = result
    return out
