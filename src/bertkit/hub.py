"""Model names of the Hugging Face Hub (`bert-base-chinese`, `org/name`) as local model directories.

A `--model` that is not a folder here but reads as a Hub model id is looked up with `huggingface_hub`'s
`snapshot_download`: from its cache (`HF_HOME`, `HF_HUB_CACHE`) when the files are there, else downloaded, unless
`HF_HUB_OFFLINE=1`. Only the files a BERT model directory holds are fetched (config, safetensors weights, tokenizer,
sentence-transformers settings). Everything else in bertkit reads the local directory this returns.
"""

from __future__ import annotations

import re
from pathlib import Path

from bertkit.errors import BertkitError
from bertkit.files import no_such_path

# A Hub model id: a name, or an owner and a name (letters, digits, '-', '_', '.'), never a path of more parts.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# The files of a BERT model directory that bertkit reads; weights as safetensors (one file or shards and their
# index), and only where a model has none, as PyTorch's .bin files (`BIN_WEIGHTS`): many models carry both, and the
# second copy would double the download.
MODEL_FILES = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "bertkit_*.json",
]
BIN_WEIGHTS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub model id (and not as a path such as `runs/x/model` or `./model`)."""
    return _HUB_ID.fullmatch(name) is not None and not name.endswith((".json", ".txt"))


def model_path(name: str | Path) -> Path:
    """The local model directory for `name`: the path itself when it exists (or when it cannot be a Hub id, so
    that the caller's own error names it); else the Hub model's snapshot, from the cache or downloaded."""
    path = Path(name)
    if path.exists() or not is_hub_id(str(name)):
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise BertkitError(
            f"{no_such_path(path)} As a Hugging Face Hub model name it needs huggingface_hub: "
            "pip install huggingface_hub"
        ) from None
    try:
        snapshot = Path(snapshot_download(str(name), allow_patterns=MODEL_FILES))
        if not any(snapshot.glob("*.safetensors")):  # an older model: its weights only as .bin files
            snapshot = Path(snapshot_download(str(name), allow_patterns=BIN_WEIGHTS))
        return snapshot
    except LocalEntryNotFoundError:
        raise BertkitError(
            f"{no_such_path(path)} Nor is the Hugging Face Hub model {name!r} in the cache (offline, or the Hub "
            "cannot be reached): download it once with network access, or give a local model directory"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BertkitError(f"{no_such_path(path)} Nor did the Hugging Face Hub give {name!r}: {first_line}") from None
