"""Serving a model directory over HTTP: `Service` (the model's calls, batched across clients), `create_app` (the
ASGI application) and `make_server` / `running` / `serve` (uvicorn).

The names are imported when first used, so that `bertkit.serve.limits` (the CLI's defaults) loads alone."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {"Service": "service", "create_app": "app", "make_server": "server", "running": "server", "serve": "server"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bertkit.serve' has no attribute {name!r}")
    return getattr(import_module(f"bertkit.serve.{_WHERE[name]}"), name)
