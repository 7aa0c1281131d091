"""Model configuration: the BERT hyper-parameters, size presets, and Hugging Face `config.json` I/O."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bertkit.errors import BertkitError

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
_HF_PASSTHROUGH = ("architectures", "id2label", "label2id", "problem_type", "finetuning_task")


@dataclass
class BertConfig:
    """BERT hyper-parameters, named as in Hugging Face's `BertConfig` so `config.json` maps 1:1."""

    vocab_size: int = 30522
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
    pad_token_id: int = 0
    # Causal (left-to-right) self-attention, as Hugging Face's BertModel does with is_decoder=True. bertkit's
    # pooler then reads the last real token, the only one that has seen the whole sequence.
    is_decoder: bool = False
    # Extra HF keys (architectures, id2label, ...) kept verbatim so a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise BertkitError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.vocab_size <= 0:
            raise BertkitError(f"vocab_size must be positive, got {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

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
        if d.get("model_type", "bert") != "bert":
            raise BertkitError(f"config has model_type {d.get('model_type')!r}; bertkit reads BERT models only")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise BertkitError(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
        names = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: d[k] for k in _HF_PASSTHROUGH if k in d}
        return cls(**kwargs, extra=extra)

    def save(self, path: str | Path) -> None:
        """Write the Hugging Face `config.json` dictionary (`to_dict`) to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BertConfig:
        """Read a `config.json` file, or the one inside a model directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise BertkitError(f"no config.json at {path}: is this a model directory?")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BertkitError(f"{path}: not a valid JSON config ({e})") from None
        return cls.from_dict(d)
