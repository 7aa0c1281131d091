"""Ordinary mistakes of a library caller get one BertkitError naming the argument, never a wrong answer.

Each case here was found by using the Python API as a user would: a string where a list of texts belongs was read
as a list of its characters, `max_length=0` meant the default, a negative id was read from the vocabulary's end, an
unknown pooling mode embedded with [CLS], a `pathlib.Path` in a config crashed a fine-tuning run after training,
and config values the CLI refuses (a batch size of 0, 0 epochs, a learning rate as text) were taken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import BertConfig, BertForPreTraining, BertkitError, BertModel, Tokenizer
from bertkit.data.config import PrepareConfig
from bertkit.infer import embed, fill_mask
from bertkit.recipes.config import FinetuneConfig, finetune_training
from bertkit.serve.limits import ServeConfig
from bertkit.tasks.settings import TaskSettings
from bertkit.tokenizer import SPECIAL_TOKENS
from bertkit.train.config import TrainConfig


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer([*SPECIAL_TOKENS, *"今天气很好", "hello", "world"])


def refused(says: str, call, *args, **kwargs) -> None:
    with pytest.raises(BertkitError) as e:
        call(*args, **kwargs)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_tokenizer_refuses_what_it_would_misread(tok: Tokenizer, tmp_path: Path) -> None:
    refused("texts must be a list of strings, got the string 'hello': put it in a list", tok.batch, "hello")
    refused("texts must be a list of strings", tok.encode_batch, "今天")
    refused("pairs must be a list of strings", tok.encode_batch, ["hello", "world"], "今天")
    refused("texts[1] must be a string, got NoneType", tok.batch, ["hello", None])
    refused("text must be a string, got list", tok.encode, ["hello"])
    refused("max_length 0 leaves no room", tok.encode, "hello world", max_length=0)  # was: the default length
    refused("max_length must be a whole number of 0 or more, got 3.5", tok.encode, "hello", max_length=3.5)
    assert len(tok.encode("hello world " * 9, max_length=np.int64(6))) == 6  # numpy's integers are whole numbers
    refused("text must be a string, got NoneType", tok.encode, None)
    refused("pair must be a string, got int", tok.encode, "hello", 3)
    refused("texts must be a list of strings, got the string 'hello'", tok.ids_flat, "hello")  # was: 5 texts
    refused("sentences[0] must be a list of words, got the string 'hello world'", tok.encode_words, ["hello world"])
    assert tok.encode_words([["hello", "world"]]) == [[[tok.token_to_id["hello"]], [tok.token_to_id["world"]]]]
    assert len(tok.encode("hello " * 600)) == tok.model_max_length  # None is still the default
    refused("tokens must be a list of tokens, got the string 'hello'", tok.convert_tokens_to_ids, "hello")
    n = len(tok.vocab)
    refused(f"id -1 is not in this vocabulary of {n} tokens", tok.convert_ids_to_tokens, [-1])  # was: the last token
    refused(f"id {n} is not in this vocabulary", tok.convert_ids_to_tokens, [n])
    refused(f"id {n} is not in this vocabulary", tok.decode, [5, n, 6])  # was: dropped without a word
    assert tok.decode(tok.encode("hello world").input_ids) == "hello world"
    refused("encodings[0] is a list, not an Encoding", tok.pad, [[1, 2, 3]])
    refused("pad_to_multiple_of must be a whole number of 1 or more, got -4", tok.pad, [tok.encode("hello")], -4)
    refused("pad_to_multiple_of must be a whole number of 1 or more, got True", tok.pad, [tok.encode("hello")], True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("今天天气很好\nhello world\n" * 20, encoding="utf-8")
    refused(f"files must be a list of corpus files, got the single path '{corpus}'", Tokenizer.train, str(corpus))
    refused("no corpus files given", Tokenizer.train, [])
    refused("vocab_size must be a whole number of 0 or more, got 1000.0", Tokenizer.train, [corpus], vocab_size=1e3)


def test_inference_helpers_refuse_bad_arguments(tok: Tokenizer) -> None:
    config = BertConfig.preset("tiny", vocab_size=len(tok.vocab))
    torch.manual_seed(0)
    pt = BertForPreTraining(config)
    encoder: BertModel = pt.bert
    assert embed(encoder, tok, ["hello world"]).shape == (1, config.hidden_size)
    refused("pooling 'max' is not one of mean, cls", embed, encoder, tok, ["hello world"], pooling="max")
    refused("batch_size must be a whole number of 1 or more, got 0", embed, encoder, tok, ["hello"], batch_size=0)
    refused("texts must be a list of strings", embed, encoder, tok, "hello world")
    refused("max_length 0 leaves no room", embed, encoder, tok, ["hello"], max_length=0)
    assert len(fill_mask(pt, tok, "今天[MASK]好", top_k=np.int64(3))[0]) == 3
    assert embed(encoder, tok, ["hello"], batch_size=np.int64(8)).shape == (1, config.hidden_size)
    for top_k in (0, -1, 2.5, True):
        refused("top_k must be a whole number of 1 or more", fill_mask, pt, tok, "今天[MASK]好", top_k=top_k)
    refused("text must be a string, got list", fill_mask, pt, tok, ["今天[MASK]好"])


def test_configs_built_in_python_are_checked_as_their_flags_are(tmp_path: Path) -> None:
    def finetune(**changes) -> FinetuneConfig:
        return FinetuneConfig(**{"task": "cls", "model": "m", "train_file": "t.tsv", "out": "o", **changes})

    # A Path where text belongs is kept as text: run_finetune wrote it to metrics.json after training, and failed.
    cfg = finetune(model=tmp_path / "m", train_file=tmp_path / "t.tsv", out=tmp_path / "o")
    assert (cfg.model, cfg.out) == (str(tmp_path / "m"), str(tmp_path / "o"))
    refused("epochs must be more than 0, got 0", finetune, epochs=0)
    refused("max_train_examples must be at least 1, got 0", finetune, max_train_examples=0)  # was: all of them
    refused("task 'tagging' is not one of cls, pair", finetune, task="tagging")
    refused("batch_size must be at least 1, got 0", finetune_training, batch_size=0)
    refused("max_steps must be at least 1, got 0", finetune_training, max_steps=0)  # was: "use the epochs"
    refused("learning_rate must be a number, got the string '1e-3'", finetune_training, learning_rate="1e-3")
    refused("learning_rate must be more than 0, got -1.0", TrainConfig, learning_rate=-1.0)
    refused("batch_size: expected a whole number, got 8.0", TrainConfig, batch_size=8.0)
    refused("batch_size must be one value, got [8, 16]", TrainConfig, batch_size=[8, 16])  # failed deep in training
    refused("precision 'fp8' is not one of auto, fp32", TrainConfig, precision="fp8")
    refused("learning_rate must be one value", finetune_training, learning_rate=[5e-5, 3e-5])  # the CLI's grid: runs
    assert TrainConfig(batch_size=np.int64(8), learning_rate=np.float32(1e-3)).batch_size == 8  # numpy's numbers
    refused("max_seq_length must be at least 8", TaskSettings, max_seq_length=4)
    refused("cors: expected one origin like https://example.org", ServeConfig, cors="https://example.org/")
    refused("port must be from 0 to 65535", ServeConfig, port=70000)
    refused("max_seq_length must be at least 8", PrepareConfig, max_seq_length=2)
    refused("eval_fraction must be from 0 to 1, got 1.5", PrepareConfig, eval_fraction=1.5)


def test_fill_mask_refuses_a_head_that_started_at_random(minilm_dir: Path) -> None:
    # An encoder-only checkpoint (sentence-transformers' MiniLM) loaded as a pre-training model: its masked-LM head
    # starts at random, and fill-mask answered from it ('castile', 0.002) without a word.
    pt = BertForPreTraining.from_pretrained(minilm_dir)
    assert any(n.startswith("mlm.") for n in pt.fresh_parameters)
    tok = Tokenizer.from_pretrained(minilm_dir)
    refused("masked-LM head was not in its checkpoint", fill_mask, pt, tok, "a [MASK]")


def test_pretraining_from_python_refuses_what_it_would_misread(tmp_path: Path, tok: Tokenizer) -> None:
    from bertkit.data.prepare import prepare
    from bertkit.recipes.config import PretrainConfig
    from bertkit.recipes.pretrain import run_pretrain

    # A switch given as text: "no" is true in Python, and an earlier run was replaced by overwrite="no".
    refused("overwrite must be True or False, got 'no'", PretrainConfig, data="d", overwrite="no")
    refused("resume must be True or False, got 'no'", PretrainConfig, data="d", resume="no")
    refused("whole_word_mask must be True or False, got 'no'", PrepareConfig, whole_word_mask="no")
    refused("lowercase must be True or False, got 'no'", Tokenizer, tok.vocab, lowercase="no")
    refused("lowercase must be True or False, got 0", Tokenizer.train, [tmp_path / "c.txt"], lowercase=0)
    # None where it is no value, and a nested config of the wrong kind.
    refused("max_seq_length must be given: None is not one of its values", PrepareConfig, max_seq_length=None)
    refused("log_every must be given", TrainConfig, log_every=None)
    refused("train must be a TrainConfig, got dict", PretrainConfig, data="d", train={"out_dir": "o"})
    refused("data must be text, got int", PretrainConfig, data=123)
    # A field set after the config was made is checked when the run starts, before anything is read or written.
    cfg = PretrainConfig(data=str(tmp_path / "none"), train=TrainConfig(out_dir=str(tmp_path / "run"), max_steps=2))
    cfg.train.max_steps = 0  # trained 0 steps and saved an untrained model
    refused("max_steps must be at least 1, got 0", run_pretrain, cfg)
    cfg.train.max_steps = None
    refused("train.max_steps must be given for pre-training", run_pretrain, cfg)
    assert not (tmp_path / "run").exists()
    corpus = tmp_path / "c.txt"
    corpus.write_text("今天天气很好。\n今天很好。\n", encoding="utf-8")
    tok.save_pretrained(tmp_path / "tok")
    settings = PrepareConfig()
    settings.max_seq_length = 2  # hung
    refused("max_seq_length must be at least 8", prepare, [corpus], tmp_path / "tok", tmp_path / "data", settings)
    refused("tokenizer_dir must be the folder of a saved tokenizer", prepare, [corpus], tok, tmp_path / "data")
    refused(f"corpus must be a list of files, got the single path '{corpus}'", prepare, corpus, tmp_path / "tok", "o")
    refused("no corpus files given", prepare, [], tmp_path / "tok", tmp_path / "data")
    refused("cfg must be a PrepareConfig, got dict", prepare, [corpus], tmp_path / "tok", "o", {"max_seq_length": 64})
    refused("overwrite must be True or False, got 'no'", prepare, [corpus], tmp_path / "tok", "o", overwrite="no")
    assert not (tmp_path / "data").exists()
    refused(f"{corpus} is a file: a model directory is a folder", tok.save_pretrained, corpus)


def test_fill_mask_needs_a_pre_training_model(tok: Tokenizer) -> None:
    encoder = BertModel(BertConfig.preset("tiny", vocab_size=len(tok.vocab)))
    for model in (None, encoder):  # open_model_dir(...).mlm of an encoder directory is None
        refused("fill-mask needs a pre-trained model with its masked-LM head", fill_mask, model, tok, "今天[MASK]")
