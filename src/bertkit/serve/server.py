"""`bertkit serve`: the API of `bertkit.serve.app` over one model directory, run by uvicorn.

uvicorn brings what a real HTTP server needs (keep-alive, `Expect: 100-continue`, a listen backlog for bursts,
graceful shutdown, worker processes); the h11 parser is chosen for its strict framing: a request with two different
Content-Length headers, or a malformed request line, is refused before the application sees it. Those refusals
answer with the API's one-line JSON error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from bertkit.errors import BertkitError
from bertkit.machine import limit_malloc_arenas, pick_device
from bertkit.serve.app import create_app
from bertkit.serve.limits import BACKENDS, MAX_BODY_BYTES, ServeConfig
from bertkit.serve.service import Service, check_precision

BACKLOG = 2048  # pending connections the kernel keeps: a burst of clients waits in it instead of retrying SYNs
LINGER_SECONDS = 2.0  # how long a refused request's unread bytes are drained before the connection is dropped
_OPTIONS_ENV = "BERTKIT_SERVE_OPTIONS"  # how `serve` hands its options to worker processes (nothing on disk)


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request the parser refuses with a one-line JSON error (400)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._refusal = ""
        self._lingering = False
        parse = self.conn.next_event

        def next_event() -> Any:
            try:
                return parse()
            except h11.RemoteProtocolError as e:
                self._refusal = str(e).split(":")[0]  # h11's reason, without the raw request line
                raise

        self.conn.next_event = next_event  # type: ignore[method-assign]

    def connection_made(self, transport: Any) -> None:
        # The listening socket is bound here and handed to uvicorn (see `_bind`); asyncio then leaves Nagle's
        # algorithm on for the connections it accepts, and a response's body, written after its headers, waits for
        # the client's delayed ACK: 40 ms added to every request on Linux.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def send_400_response(self, msg: str) -> None:
        message = f"not a valid HTTP request ({self._refusal or msg})"
        if self._refusal == "bad Content-Length":
            message = f"Content-Length must be a byte count from 0 to {MAX_BODY_BYTES}"
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json; charset=utf-8"), (b"connection", b"close")]
        response = h11.Response(status_code=400, headers=headers, reason=b"Bad Request")
        self.transport.write(self.conn.send(response))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self._close_gently()

    def _close_gently(self) -> None:
        """Close after the client has read the refusal. Closing a socket with the request's body still unread makes
        the kernel send a reset, and a reset can reach the client before the response does, which it then never
        sees: so send end-of-stream after the response, discard what still arrives, and close when the client does
        (or after LINGER_SECONDS)."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)


def open_service(
    model_dir: str | Path,
    device: str | None = None,
    backend: str = ServeConfig.backend,
    onnx: str | Path | None = None,
    threads: int | None = None,
    **options: Any,
) -> Service:
    """The `Service` over `model_dir` run by `backend`: "torch", or "onnx" (onnxruntime over `onnx`, the directory's
    `bertkit export`, fp32 or int8, with `threads` intra-op threads; on the CPU)."""
    _check_backend(backend, onnx, device, options.get("precision", ServeConfig.precision))
    if backend == "onnx":
        from bertkit.onnx_model import open_onnx_model_dir

        opened = open_onnx_model_dir(model_dir, onnx, threads, task=options.get("task"))
        return Service(model_dir, device="cpu", opened=opened, **options)
    return Service(model_dir, device=device, **options)


def _check_backend(
    backend: str, onnx: str | Path | None, device: str | None, precision: str = ServeConfig.precision
) -> None:
    """Refuse a backend and its options that do not go together (before any process loads the model)."""
    if backend not in BACKENDS:
        raise BertkitError(f"--backend {backend!r} is not available; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        if onnx is None:
            raise BertkitError("--backend onnx needs --onnx FILE: the model's `bertkit export` (fp32 or int8)")
        if precision != "fp32":
            raise BertkitError(f"--precision {precision} is for the torch backend; an ONNX file runs as exported")
        from bertkit.onnx_model import check_onnx_device

        check_onnx_device(device)
    elif onnx is not None:
        raise BertkitError("--onnx FILE is for --backend onnx")
    check_precision(precision, pick_device(device))


def _config(app: Any, host: str, port: int, workers: int = 1, factory: bool = False) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_Protocol,
        workers=workers,
        factory=factory,
        backlog=BACKLOG,
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        lifespan="off",
        timeout_worker_healthcheck=120,
    )  # fmt: skip  (a worker loads the model before it pings)


def make_server(
    service: Service, host: str = ServeConfig.host, port: int = ServeConfig.port, cors: str | None = None
) -> uvicorn.Server:
    """A uvicorn server for `service` (not yet serving). Port 0 picks a free port (see `running`)."""
    return uvicorn.Server(_config(create_app(service, host, cors), host, port))


def _bind(config: uvicorn.Config) -> socket.socket:
    # uvicorn logs a failed bind and exits: its log line is silenced so that the error below is the one line shown,
    # with the system's reason (the OSError that uvicorn caught) in it.
    uvicorn_log = logging.getLogger("uvicorn.error")
    was_disabled, uvicorn_log.disabled = uvicorn_log.disabled, True
    try:
        sock = config.bind_socket()
    except SystemExit as e:
        reason = e.__context__.strerror if isinstance(e.__context__, OSError) and e.__context__.strerror else ""
        raise BertkitError(
            f"cannot listen on {config.host}:{config.port}{f' ({reason})' if reason else ''}: the port is in use, or "
            "--host is not an address of this machine; choose another --port (or stop what uses it), or --host "
            "127.0.0.1 / 0.0.0.0"
        ) from None
    finally:
        uvicorn_log.disabled = was_disabled
    sock.listen(config.backlog)  # now, not when the event loop starts: a client may connect once the URL is printed
    return sock


@contextmanager
def running(service: Service, host: str = ServeConfig.host, port: int = 0, cors: str | None = None) -> Iterator[str]:
    """Serve `service` on a background thread while the block runs; yields the base URL (for tests and tools)."""
    server = make_server(service, host, port, cors)
    sock = _bind(server.config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive():
            threading.Event().wait(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def app_from_environment() -> Any:
    """The application of one worker process of `serve(..., workers=N)` (uvicorn imports it by name)."""
    options = json.loads(os.environ[_OPTIONS_ENV])
    threads = options.pop("threads")
    _prepare_process(threads)
    service = open_service(options.pop("model_dir"), options.pop("device"), options.pop("backend"),
                           options.pop("onnx"), threads, **options.pop("service"))  # fmt: skip
    return create_app(service, **options)


def _prepare_process(threads: int | None) -> None:
    """The process's settings for serving, before any thread starts: `threads` intra-op threads, and few malloc
    heaps (see `limit_malloc_arenas`)."""
    limit_malloc_arenas()
    if threads:
        import torch

        torch.set_num_threads(threads)


def serve(
    model_dir: str | Path, cfg: ServeConfig | None = None, *, device: str | None = None, task: str | None = None
) -> None:
    """Load `model_dir` and serve it as `cfg` says until interrupted (`cfg.workers` processes, each with its own
    copy); a fine-tuned model as a `task` model when given (e.g. "pair" for a Hugging Face classifier trained on
    text pairs)."""
    cfg = cfg or ServeConfig()
    host, port, backend, onnx, workers, threads = cfg.host, cfg.port, cfg.backend, cfg.onnx, cfg.workers, cfg.threads
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    service_options = {"batching": cfg.batching == "on", "max_batch_tokens": cfg.max_batch_tokens,
                       "max_wait_ms": cfg.max_wait_ms, "max_windows": cfg.max_windows, "precision": cfg.precision,
                       "task": task}  # fmt: skip
    _prepare_process(threads)
    if not Path(model_dir).is_dir():
        open_service(model_dir, device, backend, onnx, threads, **service_options)  # says what is wrong
    # The port before the model: a port in use is said at once, not after a large model has loaded.
    sock = _bind(_config(None, host, port))
    service = None
    try:
        if workers == 1:
            service = open_service(model_dir, device, backend, onnx, threads, **service_options)
            what = f"a {service.task_name} model" if service.task_name else "a pre-trained model"
            server = make_server(service, host, port, cfg.cors)
        else:
            from bertkit.tasks.model_dir import fine_tuned_task

            # The workers would each fail on a bad option after the parent said "serving".
            _check_backend(backend, onnx, device, cfg.precision)
            name = task or fine_tuned_task(model_dir)
            what = f"a {name} model" if name else "a pre-trained model"
            os.environ[_OPTIONS_ENV] = json.dumps({"model_dir": str(model_dir), "device": device, "backend": backend,
                                                   "onnx": onnx and str(onnx),
                                                   "service": service_options, "threads": threads, "host": host,
                                                   "cors": cfg.cors})  # fmt: skip
            config = _config("bertkit.serve.server:app_from_environment", host, port, workers, factory=True)
        print(f"serving {model_dir} ({what}) at http://{host}:{sock.getsockname()[1]}/ ; Ctrl-C stops", flush=True)
        if workers == 1:
            server.run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
        if service is not None:
            service.close()
    print("stopped", flush=True)
