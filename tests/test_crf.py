"""The linear-chain CRF (bertkit.crf) against brute force over every tag path.

With C <= 5 tags and chains of at most 5 positions there are at most 5^5 = 3125 paths, so the oracle scores every
one of them in float64 (vectorised): log Z is the log-sum-exp over the allowed paths, Viterbi's answer their argmax.
Disallowed paths are left out of the oracle entirely (not penalised), so these tests also check that the CRF's -1e4
penalty removes them from the partition function.

Tolerance of the NLL: 1e-5 absolute. The CRF works in float32 on values of magnitude about 10 (an ulp of 1e-6) over
at most 5 logsumexp steps, each adding a few ulps; the oracle is float64. A wrong recursion, a link across a
masked-out position or a missing start/end term is off by far more (order 0.1 to 1).
"""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bertkit.crf import CRF, allowed_transitions
from bertkit.errors import BertkitError

BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
BIOES = ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
ATOL = 1e-5

Masks = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def all_allowed(C: int) -> Masks:
    return torch.ones(C, dtype=torch.bool), torch.ones(C, C, dtype=torch.bool), torch.ones(C, dtype=torch.bool)


def random_crf(C: int, allowed: Masks | None, seed: int) -> CRF:
    """A CRF whose start, transition and end scores are random (zeros would hide a swapped index)."""
    crf = CRF(C, allowed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (crf.start_transitions, crf.transitions, crf.end_transitions):
            p.copy_(torch.randn(p.shape, generator=g))
    return crf


def paths_and_scores(crf: CRF, emissions: torch.Tensor, allowed: Masks | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every allowed path (P, n) over emissions (n, C) of one chain, and each one's score (P,) in float64."""
    n, C = emissions.shape
    paths = torch.tensor(list(itertools.product(range(C), repeat=n)), dtype=torch.long)  # (C^n, n)
    start, trans, end = (p.detach().double() for p in (crf.start_transitions, crf.transitions, crf.end_transitions))
    em = emissions.double()
    score = start[paths[:, 0]] + em[torch.arange(n), paths].sum(1)
    score = score + trans[paths[:, :-1], paths[:, 1:]].sum(1) + end[paths[:, -1]]
    a_start, a_trans, a_end = allowed if allowed is not None else all_allowed(C)
    valid = a_start[paths[:, 0]] & a_trans[paths[:, :-1], paths[:, 1:]].all(1) & a_end[paths[:, -1]]
    return paths[valid], score[valid]


def brute_nll(crf: CRF, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor, allowed: Masks | None):
    """The NLL of each row (B,) in float64: log-sum-exp over the allowed paths minus the gold path's score."""
    out = []
    for em, tg, m in zip(emissions, tags, mask, strict=True):
        if not m.any():
            out.append(0.0)
            continue
        paths, scores = paths_and_scores(crf, em[m], allowed)
        gold = (paths == tg[m]).all(1)
        assert gold.sum() == 1, "the gold path of a test must be allowed"
        out.append(float(torch.logsumexp(scores, 0) - scores[gold][0]))
    return torch.tensor(out, dtype=torch.float64)


def brute_best(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor, allowed: Masks | None) -> list[list[int]]:
    out = []
    for em, m in zip(emissions, mask, strict=True):
        if not m.any():
            out.append([])
            continue
        paths, scores = paths_and_scores(crf, em[m], allowed)
        out.append(paths[scores.argmax()].tolist())
    return out


def random_gold(crf: CRF, emissions: torch.Tensor, mask: torch.Tensor, allowed: Masks | None, g: torch.Generator):
    """Tags (B, T): a random allowed path at each row's selected positions, -100 elsewhere (never to be indexed)."""
    tags = torch.full(mask.shape, -100, dtype=torch.long)
    for b in range(mask.shape[0]):
        if mask[b].any():
            paths, _ = paths_and_scores(crf, emissions[b][mask[b]], allowed)
            tags[b, mask[b]] = paths[torch.randint(len(paths), (), generator=g)]
    return tags


def is_valid(path: list[int], allowed: Masks) -> bool:
    start, trans, end = allowed
    if not path:
        return True
    return bool(start[path[0]] and end[path[-1]] and all(trans[i, j] for i, j in itertools.pairwise(path)))


# Scattered selections, as the first sub-tokens of words are: one position, none, all, a prefix, gaps.
MASK = torch.tensor(
    [
        [1, 0, 1, 1, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 0, 1, 1],
        [1, 1, 1, 0, 0],
    ],
    dtype=torch.bool,
)
SCHEMES = {"unconstrained": None, "BIO": BIO, "BIOES": BIOES}


def scheme_allowed(name: str) -> tuple[int, Masks | None]:
    labels = SCHEMES[name]
    return (4, None) if labels is None else (len(labels), allowed_transitions(labels))


# ---------------------------------------------------------------------------------------------------------------
# allowed_transitions


def test_allowed_transitions_bio() -> None:
    start, trans, end = allowed_transitions(BIO)  # O B-PER I-PER B-LOC I-LOC
    assert start.tolist() == [True, True, False, True, False]  # an entity cannot start inside
    assert end.tolist() == [True] * 5  # BIO has no end marker: any tag may be last
    expected = [  # [from, to]
        [1, 1, 0, 1, 0],  # O -> I-X is not allowed
        [1, 1, 1, 1, 0],  # B-PER -> I-PER, but not I-LOC
        [1, 1, 1, 1, 0],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
    ]
    assert trans.tolist() == [[bool(x) for x in row] for row in expected]
    assert not trans[BIO.index("B-PER"), BIO.index("I-LOC")]


def test_allowed_transitions_bioes() -> None:
    labels = [*BIOES, "B-LOC", "E-LOC"]  # O B-PER I-PER E-PER S-PER B-LOC E-LOC
    start, trans, end = allowed_transitions(labels)
    assert start.tolist() == [True, True, False, False, True, True, False]
    assert end.tolist() == [True, False, False, True, True, False, True]  # cannot end on B-X or I-X
    expected = [  # [from, to]
        [1, 1, 0, 0, 1, 1, 0],  # O: then O, B-*, S-* only
        [0, 0, 1, 1, 0, 0, 0],  # B-PER: then I-PER or E-PER only
        [0, 0, 1, 1, 0, 0, 0],  # I-PER: likewise
        [1, 1, 0, 0, 1, 1, 0],  # E-PER: the entity is closed
        [1, 1, 0, 0, 1, 1, 0],  # S-PER: likewise
        [0, 0, 0, 0, 0, 0, 1],  # B-LOC: then E-LOC (no I-LOC in this set), never E-PER
        [1, 1, 0, 0, 1, 1, 0],
    ]
    assert trans.tolist() == [[bool(x) for x in row] for row in expected]


def test_allowed_transitions_synonyms() -> None:
    """BILOU and BMES are BIOES under other names, and an E-/S- tag alone makes the scheme BIOES."""
    bioes = allowed_transitions(["O", "B-X", "I-X", "E-X", "S-X"])
    for other in (["O", "B-X", "I-X", "L-X", "U-X"], ["O", "B-X", "M-X", "E-X", "S-X"]):
        for got, want in zip(allowed_transitions(other), bioes, strict=True):
            assert torch.equal(got, want), other
    _, _, end = allowed_transitions(["O", "S-X", "B-Y", "I-Y"])
    assert end.tolist() == [True, True, False, False]


@pytest.mark.parametrize("tag", ["X-PER", "PER", "B-", "o", "B_PER", "", "[CLS]"])
def test_allowed_transitions_rejects_unknown_tags(tag: str) -> None:
    with pytest.raises(BertkitError, match=re.escape(repr(tag))):
        allowed_transitions(["O", "B-PER", tag])


def test_constructor_checks() -> None:
    start, trans, end = allowed_transitions(BIO)
    with pytest.raises(BertkitError, match="needs"):
        CRF(4, (start, trans, end))
    with pytest.raises(BertkitError, match="at least one tag"):
        CRF(0)
    crf = CRF(5, (start, trans, end))
    assert set(crf.state_dict()) == {"start_transitions", "end_transitions", "transitions"}  # masks not saved
    with pytest.raises(BertkitError, match="emissions"):
        crf(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(BertkitError, match="mask"):
        crf.decode(torch.zeros(2, 3, 5), torch.ones(2, 4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------
# The negative log-likelihood


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_nll_matches_brute_force(scheme: str) -> None:
    C, allowed = scheme_allowed(scheme)
    crf = random_crf(C, allowed, seed=1)
    g = torch.Generator().manual_seed(2)
    emissions = 2 * torch.randn(*MASK.shape, C, generator=g)
    tags = random_gold(crf, emissions, MASK, allowed, g)
    want = brute_nll(crf, emissions, tags, MASK, allowed)  # (B,)
    assert want[2] == 0  # the empty row

    per_row = crf.log_partition(emissions, MASK) - crf.score(emissions, tags, MASK)
    assert per_row.dtype == torch.float32
    torch.testing.assert_close(per_row.double(), want, atol=ATOL, rtol=0)
    loss = crf(emissions, tags, MASK)
    assert loss.shape == ()
    torch.testing.assert_close(loss.double(), want.mean(), atol=ATOL, rtol=0)
    # one row at a time, with the row's length cut to its last selected position: batching changes nothing
    for b in range(MASK.shape[0]):
        T = int(MASK[b].nonzero().max()) + 1 if MASK[b].any() else 1
        alone = crf(emissions[b : b + 1, :T], tags[b : b + 1, :T], MASK[b : b + 1, :T])
        torch.testing.assert_close(alone.double(), want[b], atol=ATOL, rtol=0)


def test_positions_outside_the_chain_do_not_matter() -> None:
    """NaN emissions and -100 tags at masked-out positions: same loss, finite gradients, zero where masked out."""
    C, allowed = scheme_allowed("BIO")
    crf = random_crf(C, allowed, seed=3)
    g = torch.Generator().manual_seed(4)
    clean = torch.randn(*MASK.shape, C, generator=g)
    tags = random_gold(crf, clean, MASK, allowed, g)
    dirty = clean.masked_fill(~MASK[:, :, None], float("nan")).requires_grad_()
    loss = crf(dirty, tags, MASK)
    torch.testing.assert_close(loss, crf(clean, tags, MASK), atol=0, rtol=0)
    loss.backward()
    assert dirty.grad is not None and torch.isfinite(dirty.grad).all()
    assert (dirty.grad[~MASK] == 0).all() and (dirty.grad[MASK] != 0).any()


def test_empty_chains() -> None:
    """Rows with nothing selected add 0; a batch of only such rows has loss 0 and still backpropagates."""
    crf = random_crf(3, None, seed=5)
    emissions = torch.randn(2, 4, 3, requires_grad=True)
    tags = torch.full((2, 4), -100)
    loss = crf(emissions, tags, torch.zeros(2, 4, dtype=torch.bool))
    assert loss.item() == 0
    loss.backward()
    assert emissions.grad is not None and (emissions.grad == 0).all()
    assert crf.decode(emissions, torch.zeros(2, 4, dtype=torch.bool)) == [[], []]
    assert crf.decode(torch.zeros(0, 4, 3), torch.zeros(0, 4, dtype=torch.bool)) == []


def test_bf16_inputs_are_computed_in_float32() -> None:
    C, allowed = scheme_allowed("BIOES")
    crf = random_crf(C, allowed, seed=6)
    g = torch.Generator().manual_seed(7)
    emissions = torch.randn(*MASK.shape, C, generator=g).bfloat16()
    tags = random_gold(crf, emissions.float(), MASK, allowed, g)
    loss = crf(emissions, tags, MASK)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, crf(emissions.float(), tags, MASK), atol=0, rtol=0)
    crf_bf16 = random_crf(C, allowed, seed=6).bfloat16()  # a whole model cast to bf16 casts the CRF too
    assert crf_bf16(emissions, tags, MASK).dtype == torch.float32
    assert crf_bf16.decode(emissions, MASK) == crf_bf16.decode(emissions.float(), MASK)


def test_invalid_gold_path_is_finite() -> None:
    """A gold path that breaks the constraints costs about 1e4 (documented), not inf or NaN."""
    crf = CRF(len(BIO), allowed_transitions(BIO))
    emissions = torch.zeros(1, 3, len(BIO), requires_grad=True)
    tags = torch.tensor([[BIO.index("O"), BIO.index("I-PER"), BIO.index("I-PER")]])  # O -> I-PER
    loss = crf(emissions, tags, torch.ones(1, 3, dtype=torch.bool))
    assert 1e4 - 10 < loss.item() < 1e4 + 10
    loss.backward()
    assert emissions.grad is not None and torch.isfinite(emissions.grad).all()
    assert crf.transitions.grad is not None and torch.isfinite(crf.transitions.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# Viterbi


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_viterbi_matches_exhaustive_argmax(scheme: str) -> None:
    C, allowed = scheme_allowed(scheme)
    g = torch.Generator().manual_seed(8)
    for seed in range(10):
        crf = random_crf(C, allowed, seed=100 + seed)
        mask = torch.rand(6, 5, generator=g) < 0.6
        mask[0] = False
        mask[1] = torch.tensor([0, 0, 1, 0, 0], dtype=torch.bool)
        emissions = 2 * torch.randn(6, 5, C, generator=g)
        got = crf.decode(emissions, mask)
        assert got == brute_best(crf, emissions, mask, allowed), seed
        assert [len(p) for p in got] == mask.sum(1).tolist()
        for path in got:
            assert is_valid(path, allowed if allowed is not None else all_allowed(C))


@pytest.mark.parametrize("labels", [BIO, BIOES])
def test_viterbi_constraints_hold_against_huge_emissions(labels: list[str]) -> None:
    """Emissions of any scale cannot buy an invalid path: decoding excludes it (-inf), not just penalises it."""
    allowed = allowed_transitions(labels)
    crf = CRF(len(labels), allowed)
    emissions = torch.zeros(1, 4, len(labels))
    emissions[0, :, labels.index("I-PER")] = 1e6  # every position wants I-PER, which can never start
    path = crf.decode(emissions, torch.ones(1, 4, dtype=torch.bool))[0]
    assert is_valid(path, allowed)
    assert path[1:3] == [labels.index("I-PER")] * 2  # as much I-PER as the constraints let in


def test_decode_raises_when_nothing_is_allowed() -> None:
    _, trans, end = all_allowed(3)
    crf = CRF(3, (torch.zeros(3, dtype=torch.bool), trans, end))  # no tag may start
    with pytest.raises(BertkitError, match="no tag sequence"):
        crf.decode(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------
# Training


def test_gradients_reach_the_transition_parameters() -> None:
    C, allowed = scheme_allowed("BIO")
    crf = random_crf(C, allowed, seed=9)
    g = torch.Generator().manual_seed(10)
    emissions = torch.randn(*MASK.shape, C, generator=g, requires_grad=True)
    tags = random_gold(crf, emissions.detach(), MASK, allowed, g)
    crf(emissions, tags, MASK).backward()
    for p in (crf.start_transitions, crf.transitions, crf.end_transitions, emissions):
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).any()
    # disallowed scores are constants of the loss: their parameters get exactly no gradient
    assert crf.transitions.grad is not None and (crf.transitions.grad[~crf.allowed_transitions] == 0).all()
    assert crf.start_transitions.grad is not None and (crf.start_transitions.grad[~crf.allowed_start] == 0).all()


def test_loss_decreases_and_the_pattern_is_learned() -> None:
    """Tags alternate A B A B A over the words; only every other word's emissions say which. The CRF must learn
    the transitions A -> B and B -> A. Words are 2 sub-tokens each, only the first one selected, so the chain must
    link across the masked-out ones (which carry misleading emissions and tags -100)."""
    torch.manual_seed(11)
    B, words, C = 32, 5, 2
    word_tags = (torch.arange(words)[None, :] + torch.randint(2, (B, 1))) % 2  # (B, words) alternating
    word_emissions = torch.nn.functional.one_hot(word_tags, C).float() * 3.0  # (B, words, C)
    word_emissions[:, 1::2] = 0.0  # the odd words are ambiguous: only the transitions can tell
    emissions = torch.stack([word_emissions, -5 * word_emissions], dim=2).reshape(B, 2 * words, C)
    tags = torch.stack([word_tags, torch.full_like(word_tags, -100)], dim=2).reshape(B, 2 * words)
    mask = tags != -100

    crf = CRF(C)
    optimizer = torch.optim.Adam(crf.parameters(), lr=0.1)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = crf(emissions, tags, mask)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(losses[:10])), losses[:10]
    assert crf.decode(emissions, mask) == word_tags.tolist()


# ---------------------------------------------------------------------------------------------------------------
# Property: NLL and Viterbi against brute force over random shapes, masks and constraints


@st.composite
def crf_cases(draw: st.DrawFn):
    C = draw(st.integers(1, 4))
    T = draw(st.integers(1, 5))
    B = draw(st.integers(1, 3))
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B)))
    if draw(st.booleans()):
        allowed = None
    else:  # random constraints; tag 0 (think O) is always allowed, so every length has an allowed path
        start = torch.tensor(draw(st.lists(st.booleans(), min_size=C, max_size=C)))
        trans = torch.tensor(draw(st.lists(st.booleans(), min_size=C * C, max_size=C * C))).reshape(C, C)
        end = torch.tensor(draw(st.lists(st.booleans(), min_size=C, max_size=C)))
        start[0] = trans[0, 0] = end[0] = True
        allowed = (start, trans, end)
    seed = draw(st.integers(0, 2**31 - 1))
    return C, mask, allowed, seed


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(crf_cases())
def test_property_nll_and_viterbi_match_brute_force(case) -> None:
    C, mask, allowed, seed = case
    crf = random_crf(C, allowed, seed)
    g = torch.Generator().manual_seed(seed)
    emissions = 2 * torch.randn(*mask.shape, C, generator=g)
    tags = random_gold(crf, emissions, mask, allowed, g)
    want = brute_nll(crf, emissions, tags, mask, allowed)
    got = crf.log_partition(emissions, mask) - crf.score(emissions, tags, mask)
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(crf(emissions, tags, mask).double(), want.mean(), atol=ATOL, rtol=0)
    assert crf.decode(emissions, mask) == brute_best(crf, emissions, mask, allowed)
