from __future__ import annotations

from pathlib import Path

import transformers

from bertkit import BertConfig
from bertkit.config import PRESETS


def test_presets_match_the_bert_miniatures() -> None:
    for name, (L, H, A) in PRESETS.items():
        c = BertConfig.preset(name, vocab_size=1000)
        assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
            L,
            H,
            A,
            4 * H,
        )
    assert (PRESETS["mini"], PRESETS["base"]) == ((4, 256, 4), (12, 768, 12))


def test_config_json_roundtrip_with_transformers(tmp_path: Path, minilm_dir: Path) -> None:
    ours = BertConfig.load(minilm_dir)
    assert (ours.hidden_size, ours.num_hidden_layers, ours.vocab_size) == (384, 6, 30522)
    ours.save(tmp_path / "config.json")
    ref = transformers.BertConfig.from_pretrained(tmp_path)
    for key in ("hidden_size", "num_attention_heads", "intermediate_size", "layer_norm_eps", "vocab_size"):
        assert getattr(ref, key) == getattr(ours, key)
    assert BertConfig.load(tmp_path) == ours
