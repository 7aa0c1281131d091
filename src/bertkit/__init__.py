"""bertkit: BERT from WordPiece to serving, with Hugging Face compatible model directories."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bertkit.errors import BertkitError

if TYPE_CHECKING:
    from bertkit.config import BertConfig
    from bertkit.model import BertForPreTraining, BertModel
    from bertkit.tokenizer import Encoding, Tokenizer

__all__ = ["BertConfig", "BertForPreTraining", "BertModel", "BertkitError", "Encoding", "Tokenizer"]
__version__ = "0.1.0"

# Imported on first use: `bertkit.model` imports torch (seconds), and `bertkit --help` or `--version`, which import
# this package through `bertkit.cli`, must not wait for it.
_LAZY = {
    "BertConfig": "bertkit.config",
    "BertForPreTraining": "bertkit.model",
    "BertModel": "bertkit.model",
    "Encoding": "bertkit.tokenizer",
    "Tokenizer": "bertkit.tokenizer",
}


def __getattr__(name: str) -> Any:
    """The public classes, imported from their modules when first asked for (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'bertkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
