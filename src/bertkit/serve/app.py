"""The HTTP API of `bertkit serve` as an ASGI application (FastAPI), run by uvicorn (`bertkit.serve.server`).

    GET  /               the web page (a form for whatever the model does)
    GET  /api/info       the model: task, labels, endpoints, size
    GET  /healthz        {"status": "ok"}: the process answers
    GET  /readyz         {"status": "ready"}: the model is loaded and its test forward pass was finite (else 503)
    GET  /metrics        Prometheus text: requests, errors, latency, batches, queue depth, model load time
    GET  /openapi.json   the API's OpenAPI schema; /docs its interactive page
    POST /api/predict    {"inputs": [{"text": ...}, ...]}           -> {"predictions": [...]}   (task models)
    POST /api/fill-mask  {"texts": ["...[MASK]..."], "top_k": 5}    -> {"results": [...]}       (pre-trained models)
    POST /api/embed      {"texts": ["...", ...]}                    -> {"embeddings": [[...]], "dim": H}
                                                                   (+ "truncated": [i, ...] for texts cut)

One input may come alone: `{"text": ...}` (or the task's other fields) for predict, `{"text": ...}` for the others.
Bad input answers 4xx with {"error": what was wrong and what to send}, too much work 413 naming the limit; nothing
is ever written to disk. POSTs must say `Content-Type: application/json` (in UTF-8: another charset is refused),
and on a loopback address a Host header naming another machine is refused (403): a web page elsewhere can neither
post a form to the API nor reach it through DNS rebinding. Cross-origin requests are allowed only from the one
origin `cors` names.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertkit.constants import HOST, TOP_K
from bertkit.errors import BertkitError, NonFiniteOutputError, shown
from bertkit.serve import schemas
from bertkit.serve.limits import MAX_BODY_BYTES
from bertkit.serve.service import Service, WorkTooLarge
from bertkit.tasks.base import check_fields

log = logging.getLogger("bertkit.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
POST_ROUTES = ("/api/predict", "/api/fill-mask", "/api/embed")
GET_ROUTES = ("/", "/index.html", "/api/info", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
              "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css")  # fmt: skip
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")  # Swagger UI, served at /docs/NAME for the /docs page
CLIENT_GONE = 499  # the status recorded (never sent) for a request whose client left before its answer
# FastAPI's own OpenTelemetry instrumentation (newer versions) looks up the global providers on every request, even
# where none is set, on the event loop every request passes through: off. bertkit reports through /metrics and its
# access log.
_NO_TELEMETRY = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)
_INLINE_BODY_BYTES = 4096  # bodies up to this size are checked and tokenized on the event loop (see `_answer`)
_REWATCH_SECONDS = 0.5  # how often a waiting request renews its watch on the connection (see `_client_gone`)


def create_app(service: Service, host: str = HOST, cors: str | None = None) -> FastAPI:
    """The API over `service`. `host` is the address served: on a loopback one, Host headers are checked."""
    loopback = host in LOOPBACK
    allowed = frozenset({"127.0.0.1", "localhost", "[::1]", host.lower()}) if loopback else None
    middleware = [Middleware(_Observe, service=service), Middleware(_HostCheck, allowed=allowed)]
    if cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["GET", "POST"],
                                     allow_headers=["Content-Type"]))  # fmt: skip
    app = FastAPI(title="bertkit", summary="A BERT model served over HTTP", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", middleware=middleware, **_NO_TELEMETRY)  # fmt: skip
    errors = {s: {"model": schemas.ErrorResponse} for s in (400, 403, 413, 415, 500)}

    # FastAPI's own /docs page loads Swagger UI from a CDN: blank on a machine without internet access, and a page
    # served from loopback would fetch scripts from elsewhere. These files come from a package instead.
    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        js, css = (f"/docs/{name}" for name in DOCS_ASSETS)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="bertkit API", swagger_js_url=js,
                                   swagger_css_url=css, swagger_favicon_url="data:,")  # fmt: skip

    @app.get("/docs/{asset}", include_in_schema=False)
    async def docs_asset(asset: str) -> Response:
        if asset not in DOCS_ASSETS:
            return _error(404, f"no such file: /docs/{asset}")
        data = _docs_asset(asset)
        if data is None:
            return _error(404, "the /docs page needs the package fastapi-offline: pip install 'bertkit[serve]'")
        media = "text/javascript" if asset.endswith(".js") else "text/css"
        return Response(data, media_type=f"{media}; charset=utf-8", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", include_in_schema=False)
    @app.head("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    @app.head("/index.html", include_in_schema=False)
    async def page() -> Response:
        html = files("bertkit.serve").joinpath("page.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8")

    @app.get("/api/info", summary="What the model is and which endpoints it answers")
    async def info() -> Response:
        return _json(200, service.info())

    # HEAD too (uptime monitors send it): the same status and headers, no body (uvicorn drops it).
    @app.get("/healthz", response_model=schemas.Status, summary="The process answers")
    @app.head("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz", response_model=schemas.Status, responses={503: {"model": schemas.ErrorResponse}},
             summary="The model is loaded and computes finite outputs")  # fmt: skip
    @app.head("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if service.ready_error:
            return _error(503, service.ready_error)
        if not service.batcher.alive:
            return _error(503, "the model's worker thread has stopped; restart the server")
        return _json(200, {"status": "ready"})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    # The schema (and /docs) lists the endpoints this model answers; the others still answer, with a 400 saying so.
    answers = set(service.info()["endpoints"])

    @app.post("/api/predict", response_model=schemas.PredictResponse, responses=errors,
              openapi_extra=_body(schemas.PredictRequest), summary="The task model's predictions",
              include_in_schema="/api/predict" in answers)  # fmt: skip
    async def predict(request: Request) -> Response:
        def prepare(body: Any) -> Any:
            body = _object(body)
            if "inputs" not in body:
                return service.prepare_predict([body])  # one input alone
            check_fields(body, ("inputs",), "the request", 'send {"inputs": [...]} or one input alone')
            return service.prepare_predict(body["inputs"])

        return await _answer(service, request, prepare, lambda rows: {"predictions": rows})

    @app.post("/api/fill-mask", response_model=schemas.FillMaskResponse, responses=errors,
              openapi_extra=_body(schemas.FillMaskRequest), summary="Top-k tokens for each [MASK]",
              include_in_schema="/api/fill-mask" in answers)  # fmt: skip
    async def fill_mask(request: Request) -> Response:
        def prepare(body: Any) -> Any:
            body = _object(body)
            return service.prepare_fill_mask(_texts(body, "top_k"), body.get("top_k", TOP_K))

        return await _answer(service, request, prepare, lambda rows: {"results": rows})

    @app.post("/api/embed", response_model=schemas.EmbedResponse, responses=errors,
              openapi_extra=_body(schemas.TextsRequest), summary="Sentence embeddings")  # fmt: skip
    async def embed(request: Request) -> Response:
        return await _answer(service, request, lambda body: service.prepare_embed(_texts(_object(body))),
                             lambda answer: answer)  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404 and request.method == "POST":
            message = f"no such endpoint {path}; this model answers {', '.join(service.info()['endpoints'])}"
        elif exc.status_code == 404:
            message = f"no such page {path}; the API is under /api (see GET /api/info)"
        elif exc.status_code == 405:
            message = f"{path} takes POST with a JSON body" if path in POST_ROUTES else f"{path} takes GET"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message)

    return app


@functools.cache
def _docs_asset(name: str) -> bytes | None:
    """One of Swagger UI's files as the package fastapi-offline ships it (None when it is not installed)."""
    try:
        return files("fastapi_offline").joinpath("static", name).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError):
        return None


def _body(model: type[BaseModel]) -> dict:
    """The OpenAPI description of a JSON request body (requests are checked by `Service`, see schemas.py)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class _RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _answer(service: Service, request: Request, prepare: Callable[[Any], Any],
                  shape: Callable[[Any], dict]) -> Response:  # fmt: skip
    """Read the JSON body, check and price it, queue it for the model, and answer; a client that leaves is dropped
    from the queue."""
    try:
        body, size = await _read_json(request)
        # Tokenizing a long text must not stall other clients: a thread checks and prices a large body. A small one
        # is done here, at less cost than the hand-over to a thread.
        prepared = prepare(body) if size <= _INLINE_BODY_BYTES else await run_in_threadpool(prepare, body)
        job = service.submit(prepared)
        future = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if future.done():
            return _json(200, shape(future.result()))
        job.cancel()  # computed only if already running; its answer then goes nowhere
        return Response(status_code=CLIENT_GONE)
    except ClientDisconnect:  # gone while sending its body: nothing to answer, nothing to log
        return Response(status_code=CLIENT_GONE)
    except _RequestError as e:
        return _error(e.status, str(e))
    except WorkTooLarge as e:
        return _error(413, str(e))
    except NonFiniteOutputError as e:  # the model's fault, not the request's
        return _error(500, str(e))
    except BertkitError as e:
        return _error(400, str(e))
    except Exception as e:  # a bug, not bad input: say so, keep serving
        log.exception("error answering %s", _escape(request.url.path))
        return _error(500, f"internal error ({type(e).__name__}: {e})")


async def _client_gone(request: Request) -> None:
    """Return when the client has closed its connection. Called once the body has been read, when the server has
    nothing more to hand over from it but the news of a disconnect.

    Each `receive` makes the server read the connection again: it stops reading once the client's next request
    (pipelined) arrives, and would then never see the close. So the wait is renewed every `_REWATCH_SECONDS`."""
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), _REWATCH_SECONDS)
        except TimeoutError:
            continue
        if message["type"] == "http.disconnect":
            return


# Charsets a JSON body may declare: UTF-8's names, and ASCII's, whose every text is UTF-8 too.
UTF8_CHARSETS = ("utf-8", "utf8", "utf_8", "us-ascii", "ascii")


async def _read_json(request: Request) -> tuple[Any, int]:
    """The request's JSON body and its size in bytes."""
    kind, *params = (request.headers.get("content-type") or "").split(";")
    kind = kind.strip().lower()
    if kind != "application/json":  # also keeps out cross-site form posts, which cannot send this type
        raise _RequestError(415, f"send Content-Type: application/json (got {shown(kind)})")
    for name, _, value in (p.partition("=") for p in params):
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in UTF8_CHARSETS:  # JSON is UTF-8 (RFC 8259)
            raise _RequestError(415, f"the body is read as UTF-8 JSON; send it in UTF-8 (got charset={shown(charset)})")
    header = request.headers.get("content-length")  # the HTTP layer refuses two that differ
    chunked = "chunked" in (request.headers.get("transfer-encoding") or "").lower()
    if header is None and not chunked:
        raise _RequestError(411, "send a Content-Length header with the JSON body")
    if header is not None and int(header) > MAX_BODY_BYTES:
        raise _RequestError(413, f"a body of {header} bytes; at most {MAX_BODY_BYTES}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _RequestError(413, f"a body of more than {MAX_BODY_BYTES} bytes; at most {MAX_BODY_BYTES}")
    if not raw.strip():
        raise BertkitError("the request body is empty: send a JSON object (see GET /api/info)")
    try:
        return json.loads(raw.decode("utf-8")), len(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertkitError(f"the request body is not UTF-8 JSON ({e})") from None
    except RecursionError:
        raise BertkitError("the request body is nested too deeply") from None
    except ValueError:  # Python's limit on the digits of an integer it converts
        raise BertkitError(f"the request body holds a number of more than {sys.get_int_max_str_digits():,} "
                           "digits") from None  # fmt: skip


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BertkitError(f"expected a JSON object, got {type(body).__name__}; see GET /api/info")
    return body


def _texts(body: dict, *options: str) -> Any:
    """body["texts"], or [body["text"]] when the request sends one text; `options` are the other fields it may hold."""
    takes = 'send {"texts": ["...", ...]} or {"text": "..."}' + "".join(f', with "{o}"' for o in options)
    check_fields(body, ("texts", "text", *options), "the request", takes)
    if "texts" in body and "text" in body:
        raise BertkitError('send "texts" or "text", not both')
    if "texts" in body:
        return body["texts"]
    if "text" in body:
        return [body["text"]]
    raise BertkitError('expected {"texts": ["...", ...]} or {"text": "..."}')


def _json(status: int, obj: Any) -> Response:
    body = json.dumps(obj, ensure_ascii=False, allow_nan=False)  # strict JSON: a NaN here is a bug to see
    return Response(body.encode("utf-8"), status_code=status, media_type="application/json; charset=utf-8")


def _error(status: int, message: str) -> Response:
    return _json(status, {"error": " ".join(message.split())})  # one line, whatever the message held


_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::[0-9]{1,5})?")


def host_name(header: str) -> str | None:
    """The name in a Host header (`name` or `name:port`, an IPv6 address in brackets), lower-cased; None for
    anything else (user info, a path, spaces, an empty name): such a header names no machine to trust."""
    match = _HOST.fullmatch(header.strip().lower())
    return match.group("name") if match else None


class _HostCheck:
    """On a loopback address, refuse a Host header naming another machine (DNS rebinding from a web page)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
            if len(hosts) != 1 or host_name(hosts[0]) not in self.allowed:
                if len(hosts) == 1:
                    message = f"Host {shown(hosts[0])} is not this server; use http://127.0.0.1 or localhost"
                else:
                    found = f"{len(hosts)} Host headers" if hosts else "no Host header"
                    message = f"{found}; send one, naming 127.0.0.1 or localhost"
                await _error(403, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


_CONTROL = re.compile(r'[\x00-\x1f\x7f-\x9f"]')


def _escape(text: str) -> str:
    """`text` with control characters (and the log's quote) written as \\xNN: a request cannot forge or colour log
    lines, or end the quoted request early."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _Observe:
    """The access log (one escaped line per request) and the request metrics."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app, self.metrics = app, service.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [CLIENT_GONE]

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"]
            endpoint = path if path in POST_ROUTES or path in GET_ROUTES else "other"
            self.metrics.observe_request(endpoint, status[0], seconds)
            client = scope.get("client") or ("-", 0)
            what = "client left" if status[0] == CLIENT_GONE else str(status[0])
            log.info('%s "%s %s" %s %.1f ms', client[0], scope["method"], _escape(path), what, seconds * 1000)
