from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import transformers

from bertkit import BertConfig, BertkitError
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
    assert BertConfig.from_pretrained(tmp_path) == BertConfig.from_pretrained(tmp_path / "config.json") == ours


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("hidden_size", "384", 'hidden_size is "384" (a string): expected a positive integer (write it without'),
        ("num_attention_heads", 0, "num_attention_heads is 0: expected a positive integer"),
        ("num_hidden_layers", 6.5, "num_hidden_layers is 6.5: expected a positive integer"),
        ("layer_norm_eps", "1e-12", 'layer_norm_eps is "1e-12" (a string): expected a number > 0, such as 1e-12'),
        ("layer_norm_eps", float("nan"), "layer_norm_eps is NaN: expected a number > 0"),
        ("intermediate_size", -1536, "intermediate_size is -1536: expected a positive integer"),
        ("vocab_size", True, "vocab_size is true: expected a positive integer"),
        ("max_position_embeddings", None, "max_position_embeddings is null: expected a positive integer"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout_prob is 1.5: expected a probability from 0 to 1"),
        ("pad_token_id", 30522, "pad_token_id is 30522: expected a token id from 0 to 30521, or null"),
        ("hidden_act", ["gelu"], 'hidden_act is ["gelu"] (a list): expected the name of an activation'),
        ("is_decoder", "false", 'is_decoder is "false" (a string): expected true or false'),
        ("num_attention_heads", 5, "hidden_size 384 is not a multiple of num_attention_heads 5"),
        ("id2label", ["neg", "pos"], 'id2label is ["neg", "pos"] (a list): expected an object mapping label ids'),
        ("id2label", {"neg": "0"}, 'id2label is {"neg": "0"} (an object): expected an object mapping label ids'),
        ("architectures", "BertModel", 'architectures is "BertModel" (a string): expected a list of class names'),
    ],
)
def test_wrong_config_field_is_one_line_naming_file_field_value_and_expectation(
    tmp_path: Path, minilm_dir: Path, field: str, value, said: str
) -> None:
    d = json.loads((minilm_dir / "config.json").read_text())
    d[field] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BertkitError) as e:
        BertConfig.load(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{path}: {said}") and "\n" not in message, message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[]", "the config is a list: expected a JSON object of BERT settings"),
        ('"bert"', "the config is a string: expected a JSON object"),
        ('{"hidden_size": 384,', "not valid JSON (Expecting property name enclosed in double quotes"),
        ("", "not valid JSON"),
    ],
)
def test_config_that_is_not_a_json_object(tmp_path: Path, text: str, said: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(BertkitError, match=f"^{re.escape(str(tmp_path / 'config.json'))}: {re.escape(said)}"):
        BertConfig.load(tmp_path / "config.json")


def test_every_way_of_making_a_config_is_checked() -> None:
    """Constructor, preset, from_dict and dataclasses.replace all run the same validation."""
    with pytest.raises(BertkitError, match="num_hidden_layers is 0"):
        BertConfig(num_hidden_layers=0)
    with pytest.raises(BertkitError, match="vocab_size is -3"):
        BertConfig.preset("tiny", vocab_size=-3)
    with pytest.raises(BertkitError, match='type_vocab_size is "2"'):
        BertConfig.from_dict({"type_vocab_size": "2"})
    config = BertConfig.preset("tiny", vocab_size=100)
    with pytest.raises(BertkitError, match=r"attention_probs_dropout_prob is -0\.1"):
        dataclasses.replace(config, attention_probs_dropout_prob=-0.1)
    config.__dict__.update(hidden_size="128")  # bypasses the constructor: validate() is there for such code
    with pytest.raises(BertkitError, match='hidden_size is "128"'):
        config.validate()


def test_valid_hugging_face_variants_still_load(tmp_path: Path, minilm_dir: Path) -> None:
    """What real config.json files hold must keep loading: a null pad_token_id, integer dropout and eps, id2label
    with string keys."""
    d = json.loads((minilm_dir / "config.json").read_text())
    d.update(pad_token_id=None, hidden_dropout_prob=0, initializer_range=0, id2label={"0": "a", "1": "b"})
    (tmp_path / "config.json").write_text(json.dumps(d))
    config = BertConfig.load(tmp_path)
    assert config.pad_token_id is None and config.extra["id2label"] == {"0": "a", "1": "b"}
