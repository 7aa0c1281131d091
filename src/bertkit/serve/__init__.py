"""Serving a model directory over HTTP: `Service` (the model's calls) and `make_server` / `serve` (the HTTP layer)."""

from bertkit.serve.server import make_server, serve
from bertkit.serve.service import Service

__all__ = ["Service", "make_server", "serve"]
