"""`bertkit serve`: a JSON API and a web page over one model directory, on the standard library's HTTP server.

    GET  /               the web page (a form for whatever the model does)
    GET  /api/info       the model: task, labels, endpoints, size
    GET  /healthz        {"status": "ok"}
    POST /api/predict    {"inputs": [{"text": ...}, ...]}           -> {"predictions": [...]}   (task models)
    POST /api/fill-mask  {"texts": ["...[MASK]..."], "top_k": 5}    -> {"results": [...]}       (pre-trained models)
    POST /api/embed      {"texts": ["...", ...]}                    -> {"embeddings": [[...]], "dim": H}

One input may come alone: `{"text": ...}` (or the task's other fields) for predict, `{"text": ...}` for the others.
Bad input answers 400 with {"error": what was wrong and what to send}; nothing is ever written to disk.
"""

from __future__ import annotations

import json
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any

from bertkit.errors import BertkitError
from bertkit.serve.service import Service

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    service: Service  # set on the subclass that `make_server` builds
    server_version = "bertkit"

    def do_GET(self) -> None:
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
        path = self.path.split("?", 1)[0]
        route = _POST_ROUTES.get(path)
        if route is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint {path}; this model answers {self._endpoints()}")
            return
        try:
            body = self._read_json()
            self._json(HTTPStatus.OK, route(self.service, body))
        except BertkitError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except _TooLarge as e:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(e))
        except Exception as e:  # a bug, not bad input: say so, keep serving
            log.exception("error answering %s", path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(e).__name__}: {e})")

    def _endpoints(self) -> str:
        return ", ".join(self.service.info()["endpoints"])

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _TooLarge(f"request body of {length} bytes; the limit is {MAX_BODY_BYTES}")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BertkitError(f"the request body is not UTF-8 JSON ({e})") from None

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

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


class _TooLarge(Exception):
    pass


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


def make_server(service: Service, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for `service` (not yet serving: call `serve_forever`). Port 0 picks a free port."""
    handler = type("Handler", (_Handler,), {"service": service})
    return ThreadingHTTPServer((host, port), handler)


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, device: str | None = None) -> None:
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
