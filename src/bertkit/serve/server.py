"""`bertkit serve`: a JSON API and a web page over one model directory, on the standard library's HTTP server.

    GET  /               the web page (a form for whatever the model does)
    GET  /api/info       the model: task, labels, endpoints, size
    GET  /healthz        {"status": "ok"}
    POST /api/predict    {"inputs": [{"text": ...}, ...]}           -> {"predictions": [...]}   (task models)
    POST /api/fill-mask  {"texts": ["...[MASK]..."], "top_k": 5}    -> {"results": [...]}       (pre-trained models)
    POST /api/embed      {"texts": ["...", ...]}                    -> {"embeddings": [[...]], "dim": H}

One input may come alone: `{"text": ...}` (or the task's other fields) for predict, `{"text": ...}` for the others.
Bad input answers 4xx with {"error": what was wrong and what to send}; nothing is ever written to disk. POSTs must
say `Content-Type: application/json`, and on a loopback address a Host header naming another machine is refused
(403): a web page elsewhere can neither post a form to the API nor reach it through DNS rebinding.
"""

from __future__ import annotations

import json
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any

from bertkit.constants import HOST, PORT
from bertkit.errors import BertkitError, NonFiniteOutputError
from bertkit.serve.service import Service

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    service: Service  # set on the subclass that `make_server` builds
    allowed_hosts: frozenset[str] | None = None  # Host header names accepted; None: any (a non-loopback --host)
    server_version = "bertkit"
    timeout = 30  # seconds a connection may stall before its thread gives up on it

    def _host_ok(self) -> bool:
        """On a loopback address, refuse a Host header naming another machine (DNS rebinding from a web page)."""
        if self.allowed_hosts is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name in self.allowed_hosts:
            return True
        self._error(HTTPStatus.FORBIDDEN, f"Host {host!r} is not this server; use http://127.0.0.1 or localhost")
        return False

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            page = files("bertkit.serve").joinpath("page.html").read_bytes()
            self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.service.info())
        elif path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif path in _POST_ROUTES:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST with a JSON body")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page {path}; the API is under /api (see GET /api/info)")

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0]
        route = _POST_ROUTES.get(path)
        if route is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {path}; this model answers {self._endpoints()}")
            return
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":  # also keeps out cross-site form posts, which cannot send this type
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"send Content-Type: application/json (got {kind!r})")
            return
        try:
            body = self._read_json()
            self._json(HTTPStatus.OK, route(self.service, body))
        except NonFiniteOutputError as e:  # the model's fault, not the request's
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(e))
        except BertkitError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except _BadLength as e:
            self._error(e.status, str(e))
        except Exception as e:  # a bug, not bad input: say so, keep serving
            log.exception("error answering %s", path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(e).__name__}: {e})")

    def _endpoints(self) -> str:
        return ", ".join(self.service.info()["endpoints"])

    def _read_json(self) -> Any:
        header = self.headers.get("Content-Length")
        if header is None:
            raise _BadLength(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header with the JSON body")
        try:
            length = int(header)
        except ValueError:
            raise _BadLength(HTTPStatus.BAD_REQUEST, f"Content-Length {header!r} is not a number") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise _BadLength(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of {length} bytes; at most {MAX_BODY_BYTES}")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BertkitError(f"the request body is not UTF-8 JSON ({e})") from None
        except RecursionError:
            raise BertkitError("the request body is nested too deeply") from None

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        body = json.dumps(obj, ensure_ascii=False, allow_nan=False)  # strict JSON: a NaN here is a bug to see
        self._send(status, body.encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class _BadLength(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BertkitError(f"expected a JSON object, got {type(body).__name__}; see GET /api/info")
    return body


def _texts(body: dict) -> Any:
    """body["texts"], or [body["text"]] when the request sends one text."""
    if "texts" in body:
        return body["texts"]
    if "text" in body:
        return [body["text"]]
    raise BertkitError('expected {"texts": ["...", ...]} or {"text": "..."}')


def _predict(service: Service, body: Any) -> dict:
    body = _object(body)
    return {"predictions": service.predict(body.get("inputs", [body]))}


def _fill_mask(service: Service, body: Any) -> dict:
    body = _object(body)
    return {"results": service.fill_mask(_texts(body), top_k=body.get("top_k", 5))}


def _embed(service: Service, body: Any) -> dict:
    vectors = service.embed(_texts(_object(body)))
    return {"embeddings": vectors, "dim": len(vectors[0])}


_POST_ROUTES = {"/api/predict": _predict, "/api/fill-mask": _fill_mask, "/api/embed": _embed}


def make_server(service: Service, host: str = HOST, port: int = PORT) -> ThreadingHTTPServer:
    """An HTTP server for `service` (not yet serving: call `serve_forever`). Port 0 picks a free port."""
    loopback = host in ("127.0.0.1", "localhost", "::1")
    allowed = frozenset({"127.0.0.1", "localhost", "[::1]", host}) if loopback else None
    handler = type("Handler", (_Handler,), {"service": service, "allowed_hosts": allowed})
    return ThreadingHTTPServer((host, port), handler)


def serve(model_dir: str, host: str = HOST, port: int = PORT, device: str | None = None) -> None:
    """Load `model_dir` and serve it until interrupted."""
    service = Service(model_dir, device=device)
    try:
        server = make_server(service, host, port)
    except OSError as e:
        raise BertkitError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    what = f"a {service.task_name} model" if service.task_name else "a pre-trained model"
    print(f"serving {model_dir} ({what}) at http://{host}:{server.server_address[1]}/ ; Ctrl-C stops", flush=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
