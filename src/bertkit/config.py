"""Model configuration: the BERT hyper-parameters, size presets, and Hugging Face `config.json` I/O."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bertkit.constants import VOCAB_SIZE
from bertkit.errors import BertkitError
from bertkit.files import no_such_path, read_json

# Google's BERT miniatures (L layers, H hidden, A heads); intermediate size is 4H.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}

# Hugging Face keys that we carry through unchanged but do not use.
# "crf": bertkit's own key, true for a token classifier with a CRF over its logits (transformers keeps it unused).
_HF_PASSTHROUGH = ("architectures", "id2label", "label2id", "problem_type", "finetuning_task", "crf")

# Fields that must be positive whole numbers (sizes and counts).
_POSITIVE_INTS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a size


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _wrong(name: str, value: Any, expected: str) -> str:
    """What is wrong with one field, e.g. `hidden_size is "384" (a string): expected a positive integer`; the value
    is written as JSON writes it, so it reads as it does in config.json."""
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    kind = {str: " (a string)", list: " (a list)", dict: " (an object)", bool: "", type(None): ""}.get(type(value), "")
    hint = " (write it without quotes)" if isinstance(value, str) and _parses_as_number(value) else ""
    return f"{name} is {shown}{kind}: expected {expected}{hint}"


def _parses_as_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass
class BertConfig:
    """BERT hyper-parameters, named as in Hugging Face's `BertConfig` so `config.json` maps 1:1."""

    vocab_size: int = VOCAB_SIZE
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0  # null in some Hugging Face configs: no padding index
    # Causal (left-to-right) self-attention, as Hugging Face's BertModel does with is_decoder=True. bertkit's
    # pooler then reads the last real token, the only one that has seen the whole sequence.
    is_decoder: bool = False
    # Extra HF keys (architectures, id2label, ...) kept verbatim so a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a `BertkitError` naming the first field whose value a BERT model cannot be built from (its type, or
        its range), and what is expected. Every constructor runs it; code that assigns fields afterwards should call
        it again (or build the config with `dataclasses.replace`)."""
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not (_is_int(value) and value > 0):
                raise BertkitError(_wrong(name, value, "a positive integer"))
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not (_is_number(value) and 0 <= value <= 1):
                raise BertkitError(_wrong(name, value, "a probability from 0 to 1"))
        if not (_is_number(self.initializer_range) and self.initializer_range >= 0):
            raise BertkitError(_wrong("initializer_range", self.initializer_range, "a number >= 0, such as 0.02"))
        if not (_is_number(self.layer_norm_eps) and self.layer_norm_eps > 0):
            raise BertkitError(_wrong("layer_norm_eps", self.layer_norm_eps, "a number > 0, such as 1e-12"))
        pad = self.pad_token_id
        if pad is not None and not (_is_int(pad) and 0 <= pad < self.vocab_size):
            raise BertkitError(_wrong("pad_token_id", pad, f"a token id from 0 to {self.vocab_size - 1}, or null"))
        if not (isinstance(self.hidden_act, str) and self.hidden_act):
            raise BertkitError(_wrong("hidden_act", self.hidden_act, 'the name of an activation, such as "gelu"'))
        if not isinstance(self.is_decoder, bool):
            raise BertkitError(_wrong("is_decoder", self.is_decoder, "true or false"))
        if self.hidden_size % self.num_attention_heads != 0:
            raise BertkitError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}: "
                "each head takes an equal share of the hidden size"
            )
        if not isinstance(self.extra, dict):
            raise BertkitError(f"extra is {type(self.extra).__name__}: expected a dict of Hugging Face keys")
        expected = {"id2label": 'an object mapping label ids to names, such as {"0": "neg"}',
                    "label2id": 'an object mapping label names to ids, such as {"neg": 0}'}  # fmt: skip
        for name, words in expected.items():
            value = self.extra.get(name)
            if value is not None and not isinstance(value, dict):
                raise BertkitError(_wrong(name, value, words))
        id2label = self.extra.get("id2label") or {}
        if any(not _is_int(k) and not (isinstance(k, str) and k.strip().lstrip("-").isdigit()) for k in id2label):
            raise BertkitError(_wrong("id2label", id2label, expected["id2label"]))
        arch = self.extra.get("architectures")
        if arch is not None and not (isinstance(arch, list) and all(isinstance(a, str) for a in arch)):
            raise BertkitError(_wrong("architectures", arch, 'a list of class names, such as ["BertModel"]'))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        """A config for one of the size presets (tiny, mini, small, medium, base, large)."""
        if name not in PRESETS:
            raise BertkitError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        kwargs: dict[str, Any] = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dictionary."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(self.extra)
        d["model_type"] = "bert"
        d["position_embedding_type"] = "absolute"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Build from a Hugging Face `config.json` dictionary; unknown keys we need are kept in `extra`."""
        if not isinstance(d, dict):
            kind = {list: "a list", str: "a string"}.get(type(d), f"a JSON {type(d).__name__}")
            raise BertkitError(f"the config is {kind}: expected a JSON object of BERT settings, such as "
                               '{"hidden_size": 768, ...}')  # fmt: skip
        if d.get("model_type", "bert") != "bert":
            raise BertkitError(f"config has model_type {d.get('model_type')!r}; bertkit reads BERT models only")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise BertkitError(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: d[k] for k in _HF_PASSTHROUGH if k in d}
        return cls(**kwargs, extra=extra)

    def save(self, path: str | Path, architecture: str | None = None) -> None:
        """Write the Hugging Face `config.json` dictionary (`to_dict`) to `path`, atomically; `architecture` names
        the model class that transformers builds from it (e.g. "BertForPreTraining")."""
        from bertkit.files import atomic_write

        d = self.to_dict()
        if architecture is not None:
            d["architectures"] = [architecture]
        text = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> BertConfig:
        """`load`, under the name transformers gives it (a model directory or its config.json)."""
        return cls.load(path)

    @classmethod
    def load(cls, path: str | Path) -> BertConfig:
        """Read a `config.json` file, or the one inside a model directory. Every error names the file."""
        path = Path(path)
        if not path.exists():  # a typo in --model: say so, rather than ask whether it is a model directory
            raise BertkitError(no_such_path(path))
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise BertkitError(f"no config.json at {path}: is this a model directory?")
        d = read_json(path, "restore the file or copy the model again")
        try:
            return cls.from_dict(d)
        except BertkitError as e:
            raise BertkitError(f"{path}: {e}") from None
