"""What the models refuse: inputs and labels they would read wrongly, or fail on deep inside torch.

A mask of another shape than the ids was read by broadcasting (a batch of two came back as one sequence), and ids
outside the vocabulary (a tokenizer of another model) failed in an embedding lookup. Each is now one BertkitError
naming the tensor, before any work; the inputs that are right still give what they gave.
"""

from __future__ import annotations

import pytest
import torch

from bertkit import BertConfig, BertForPreTraining, BertkitError, BertModel
from bertkit.model import BertForSequenceClassification, BertForTokenClassification

IDS = torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


@pytest.fixture(scope="module")
def config() -> BertConfig:
    return BertConfig.preset("tiny", vocab_size=40)


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ({"input_ids": IDS, "attention_mask": MASK[:1]}, "mask must have input_ids' shape (2, 4), got shape (1, 4)"),
        ({"input_ids": IDS, "attention_mask": MASK.T}, "mask must have input_ids' shape (2, 4), got shape (4, 2)"),
        ({"input_ids": IDS, "token_type_ids": IDS[:, :2]}, "token_type_ids must have input_ids' shape"),
        ({"input_ids": IDS[0]}, "input_ids must be a (batch, tokens) tensor, got shape (4,)"),
        ({"input_ids": IDS.tolist()}, "input_ids must be a (batch, tokens) tensor, got list"),
        ({"input_ids": IDS.float()}, "input_ids must hold integers (torch.long), got torch.float32"),
        ({"input_ids": IDS, "token_type_ids": IDS.bool()}, "token_type_ids must hold integers"),
        ({"input_ids": torch.zeros(2, 0, dtype=torch.long)}, "holds no tokens"),
        ({"input_ids": IDS + 40}, "input_ids holds 49, outside this model's 40 vocabulary"),
        ({"input_ids": IDS - 1}, "input_ids holds -1, outside this model's 40 vocabulary"),
        ({"input_ids": IDS, "token_type_ids": IDS * 0 + 2}, "token_type_ids holds 2, outside this model's 2"),
    ],
)  # fmt: skip
def test_the_encoder_refuses_inputs_it_would_misread(config: BertConfig, inputs: dict, says: str) -> None:
    model = BertModel(config).eval()
    with pytest.raises(BertkitError) as e:
        model(**inputs)
    assert says in str(e.value), str(e.value)


def test_right_inputs_pass_also_a_float_or_bool_mask(config: BertConfig) -> None:
    model = BertModel(config).eval()
    with torch.no_grad():
        want = model(IDS, attention_mask=MASK).last_hidden_state
        for mask in (MASK.float(), MASK.bool(), MASK.int()):
            # Not bitwise: a small batch may run on one thread or two (`ThreadChoice` tries both), and the sums of
            # a product split across threads round differently.
            torch.testing.assert_close(model(IDS, attention_mask=mask).last_hidden_state, want, rtol=1e-5, atol=1e-5)
        assert model(IDS.int()).last_hidden_state.shape == (2, 4, config.hidden_size)


def test_labels_of_the_wrong_shape_type_or_range_are_refused(config: BertConfig) -> None:
    torch.manual_seed(0)
    pt = BertForPreTraining(config)
    mlm = torch.full_like(IDS, -100)
    mlm[0, 1] = 7
    nsp = torch.tensor([0, 1])
    assert pt(IDS, attention_mask=MASK, mlm_labels=mlm, nsp_labels=nsp).loss.isfinite()  # right ones: a loss
    cases = [
        ({"mlm_labels": mlm[:1]}, "mlm_labels must have shape (2, 4), got shape (1, 4)"),
        ({"mlm_labels": mlm.float()}, "mlm_labels must hold integers"),
        ({"mlm_labels": torch.where(mlm == 7, 40, mlm)}, "mlm_labels holds 40: labels run from 0 to 39 (or -100"),
        ({"mlm_labels": torch.where(mlm == 7, -5, mlm)}, "mlm_labels holds -5"),
        ({"nsp_labels": torch.tensor([0, 2])}, "nsp_labels holds 2: labels run from 0 to 1"),
        ({"nsp_labels": nsp[:, None]}, "nsp_labels must have shape (2,), got shape (2, 1)"),
    ]
    for labels, says in cases:
        with pytest.raises(BertkitError) as e:
            pt(IDS, attention_mask=MASK, **labels)
        assert says in str(e.value), str(e.value)
    with pytest.raises(BertkitError, match="labels holds 3: labels run from 0 to 2"):
        BertForSequenceClassification(config, num_labels=3)(IDS, attention_mask=MASK, labels=torch.tensor([0, 3]))
    tags = torch.where(MASK.bool(), 1, -100)
    tagger = BertForTokenClassification(config, num_labels=3)
    assert tagger(IDS, attention_mask=MASK, labels=tags).loss.isfinite()
    with pytest.raises(BertkitError, match="labels must have shape \\(2, 4\\)"):
        tagger(IDS, attention_mask=MASK, labels=tags[:, :3])


def test_the_inputs_are_named_before_their_labels_and_targets_have_their_shapes(config: BertConfig) -> None:
    from bertkit.model import BertForQuestionAnswering

    torch.manual_seed(0)
    with pytest.raises(BertkitError, match="input_ids must be a \\(batch, tokens\\) tensor, got list"):
        BertForPreTraining(config)(IDS.tolist(), mlm_labels=torch.full_like(IDS, -100))  # was an AttributeError
    regression = BertForSequenceClassification(config, num_labels=1).eval()
    assert "problem_type" not in config.extra  # the caller's config: a classifier made from it later computed MSE
    values = torch.tensor([0.5, -1.0])
    want = regression(IDS, attention_mask=MASK, labels=values).loss
    # (B, 1), as transformers takes it, is the same loss; it was broadcast against (B,) into a (B, B) loss.
    assert torch.equal(regression(IDS, attention_mask=MASK, labels=values[:, None]).loss, want)
    with pytest.raises(BertkitError, match="labels must have shape \\(2,\\), got shape \\(3,\\)"):
        regression(IDS, attention_mask=MASK, labels=torch.tensor([0.5, -1.0, 2.0]))
    qa = BertForQuestionAnswering(config)
    start, end = torch.tensor([1, 2]), torch.tensor([2, 2])
    assert qa(IDS, attention_mask=MASK, start_positions=start, end_positions=end).loss.isfinite()
    with pytest.raises(BertkitError, match="start_positions must have shape \\(2,\\), got shape \\(2, 1\\)"):
        qa(IDS, attention_mask=MASK, start_positions=start[:, None], end_positions=end)
    with pytest.raises(BertkitError, match="end_positions must hold integers"):
        qa(IDS, attention_mask=MASK, start_positions=start, end_positions=end.float())


def test_a_task_model_with_labels_still_exports(config: BertConfig) -> None:
    # The label checks read values (a data-dependent branch): while a graph is exported they stand aside, as the
    # input checks do, so the loss still traces.
    class WithLoss(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple:
            out = self.model(ids, attention_mask=mask, labels=labels)
            return out.loss, out.logits

    torch.manual_seed(0)
    tags = torch.where(MASK.bool(), 1, -100)
    for model, labels in ((BertForSequenceClassification(config, num_labels=3), torch.tensor([0, 2])),
                          (BertForTokenClassification(config, num_labels=3), tags)):  # fmt: skip
        wrapped = WithLoss(model.eval())
        program = torch.export.export(wrapped, (IDS, MASK, labels), strict=False)
        with torch.no_grad():
            assert torch.allclose(program.module()(IDS, MASK, labels)[0], wrapped(IDS, MASK, labels)[0], atol=1e-6)
