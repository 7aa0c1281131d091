"""A linear-chain conditional random field (Lafferty et al., 2001) on top of per-token emission scores.

For token labelling (NER) a CRF replaces the per-token softmax: the score of a whole tag sequence y_1..y_n is

    score(y) = start[y_1] + sum_i emit[i, y_i] + sum_i trans[y_i, y_{i+1}] + end[y_n]

and training maximises log p(y) = score(y) - log Z, where Z sums exp(score) over every tag sequence (the forward
algorithm). Decoding is Viterbi: the single best sequence. `allowed_transitions` turns BIO / BIOES tag names into
masks of the valid first tags, transitions and last tags, so that no decoded sequence is invalid (e.g. O -> I-PER).

The mask of a batch selects the positions that belong to the chain. They need not be a prefix: in BERT NER only
each word's first sub-token carries a label, so [CLS], continuation sub-tokens, [SEP] and padding are masked out,
and the chain links the selected positions in order, skipping the rest.

Shapes: B batch, T sequence length, C tags (classes), L the longest chain in the batch (selected positions).
Everything is computed in float32, whatever the dtype of the emissions and of the parameters (bf16 training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bertkit.errors import BertkitError

# The score of a disallowed start, transition or end in the loss. Large enough that exp() of it is exactly 0
# in float32 (disallowed paths vanish from the partition function), finite so that no inf - inf or 0 * inf makes a
# NaN gradient, and small enough that a score of a few times this still has about 1e-3 resolution in float32.
DISALLOWED = -1e4

# Tag prefixes and their meaning: B begin, I inside, E end, S single, O outside. M (BMES), L and U (BILOU) are
# other names for I, E and S.
_PREFIXES = {"B": "B", "I": "I", "M": "I", "E": "E", "L": "E", "S": "S", "U": "S"}


def _parse_tag(tag: str) -> tuple[str, str]:
    """`"B-PER"` -> `("B", "PER")`, `"O"` -> `("O", "")`; anything else is a BertkitError naming the tag."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in _PREFIXES or not kind:
        raise BertkitError(
            f"tag {tag!r} is not O or B-/I-/E-/S- (also M-/L-/U-) followed by an entity type; "
            "a CRF's allowed transitions are defined for the BIO and BIOES tag schemes only"
        )
    return _PREFIXES[prefix], kind


def allowed_transitions(labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid first tags `start (C,)`, transitions `transitions (C, C)` [from, to] and last tags `end (C,)`.

    `labels` are the tag names in id order. The scheme is BIOES when any E-/S- (or L-/U-) tag is present, else BIO:

    - BIO: I-X only after B-X or I-X, and never first. Any tag may be last.
    - BIOES: I-X and E-X only after B-X or I-X (same X); B-X, S-X and O only after O, E-* or S-*, or first;
      the last tag is O, E-* or S-* (an entity cannot be left open).

    Returns boolean masks (True: allowed) on the CPU. Raises BertkitError naming a tag that is not of the scheme.
    """
    parsed = [_parse_tag(tag) for tag in labels]
    bioes = any(prefix in ("E", "S") for prefix, _ in parsed)
    C = len(parsed)
    start = torch.zeros(C, dtype=torch.bool)
    transitions = torch.zeros(C, C, dtype=torch.bool)
    end = torch.zeros(C, dtype=torch.bool)
    # "closed": the tag ends any entity, so whatever comes next must open a new one (or be O)
    closed = ("O", "E", "S") if bioes else ("O", "B", "I")
    for j, (to_prefix, to_kind) in enumerate(parsed):
        continues = to_prefix in ("I", "E")  # the tag continues an entity opened before it
        start[j] = not continues
        end[j] = to_prefix in closed
        for i, (from_prefix, from_kind) in enumerate(parsed):
            if continues:
                transitions[i, j] = from_prefix in ("B", "I") and from_kind == to_kind
            else:
                transitions[i, j] = from_prefix in closed
    return start, transitions, end


class CRF(nn.Module):
    """A linear-chain CRF over C tags: `forward` is the mean negative log-likelihood, `decode` is Viterbi.

    Constraints (`allowed`, e.g. from `allowed_transitions`) apply to both training and decoding, so the model is
    trained on the same distribution it decodes from: the loss scores every disallowed start, transition or end
    as DISALLOWED (-1e4), which removes the invalid paths from the partition function while keeping every value and
    gradient finite, and `decode` excludes them outright (-inf: no gradient is needed there, and a hard exclusion
    holds whatever the scale of the emissions). The gold tags of training data must then form valid paths: an
    invalid gold path does not make the loss inf or NaN, but it costs about 1e4 per violation, which swamps
    everything else in the batch (its gradient stays that of an ordinary example, since the penalty is constant).
    """

    # Fine-tuning trains the CRF's scores at this multiple of the encoder's learning rate (`lr_scale`, read by
    # bertkit.train.optim.param_groups): they start at zero and must reach a few units, while BERT's 2e-5..5e-5
    # moves an Adam-trained parameter by about that much per step, far too little over a few thousand steps.
    lr_scale = 100.0

    def __init__(self, num_tags: int, allowed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        if num_tags < 1:
            raise BertkitError(f"a CRF needs at least one tag, got num_tags={num_tags}")
        C = num_tags
        # Zeros, not random: at the start of fine-tuning the emissions of a fresh classifier head decide alone,
        # Viterbi then picks each token's best allowed tag, and the CRF draws no random numbers, so adding it does
        # not shift the random stream that initialises the rest of the model.
        self.start_transitions = nn.Parameter(torch.zeros(C))  # (C,) score of each first tag
        self.end_transitions = nn.Parameter(torch.zeros(C))  # (C,) score of each last tag
        self.transitions = nn.Parameter(torch.zeros(C, C))  # (C, C) score of tag i followed by tag j, [from, to]
        if allowed is None:
            allowed = (
                torch.ones(C, dtype=torch.bool),
                torch.ones(C, C, dtype=torch.bool),
                torch.ones(C, dtype=torch.bool),
            )
        start, trans, end = (torch.as_tensor(m).bool().clone() for m in allowed)  # a copy: the caller keeps theirs
        if start.shape != (C,) or trans.shape != (C, C) or end.shape != (C,):
            raise BertkitError(
                f"allowed masks have shapes {tuple(start.shape)}, {tuple(trans.shape)}, {tuple(end.shape)}; "
                f"a CRF over {C} tags needs ({C},), ({C}, {C}), ({C},)"
            )
        # Non-persistent: the masks follow from the label names (in the model directory's config), so checkpoints
        # stay plain parameters, and a checkpoint loads even if the constraints are changed or dropped.
        self.register_buffer("allowed_start", start, persistent=False)
        self.register_buffer("allowed_transitions", trans, persistent=False)
        self.register_buffer("allowed_end", end, persistent=False)

    @property
    def num_tags(self) -> int:
        """How many tags the CRF scores (the classifier's outputs)."""
        return self.transitions.shape[0]

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    def _scores(self, fill: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The start (C,), transition (C, C) and end (C,) scores in float32, with `fill` where disallowed."""
        # masked_fill, not an addition: the disallowed parameters get no gradient at all, so they stay at their
        # initial value instead of drifting on the pull of the partition function
        start = self.start_transitions.float().masked_fill(~self.allowed_start, fill)
        trans = self.transitions.float().masked_fill(~self.allowed_transitions, fill)
        end = self.end_transitions.float().masked_fill(~self.allowed_end, fill)
        return start, trans, end

    def _compact(
        self, emissions: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Move each row's selected positions to the left, in order: a prefix mask, which the recursions need.

        Returns float32 emissions (B, L, C) (0 where masked out), tags (B, L) (0 where masked out), the prefix mask
        (B, L) and the chain lengths (B,), where L is the longest chain.
        """
        if emissions.dim() != 3 or emissions.shape[-1] != self.num_tags:
            raise BertkitError(f"emissions must be (batch, length, {self.num_tags}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2] or (tags is not None and tags.shape != mask.shape):
            got = f"tags {tuple(tags.shape)}, " if tags is not None else ""
            raise BertkitError(
                f"mask and tags must be (batch, length) = {tuple(emissions.shape[:2])}, "
                f"got {got}mask {tuple(mask.shape)}"
            )
        mask = mask.bool()
        B, _, C = emissions.shape
        lengths = mask.sum(dim=1)  # (B,)
        # A stable sort of the mask, True first, lists each row's selected positions in their original order.
        order = torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices  # (B, T)
        L = int(lengths.max()) if B > 0 else 0  # one host sync; it saves the loop over the unselected positions
        order = order[:, :L]  # (B, L)
        prefix = torch.arange(L, device=mask.device)[None, :] < lengths[:, None]  # (B, L)
        emissions = emissions.float().gather(1, order[:, :, None].expand(B, L, C))  # (B, L, C)
        # Zero, not just ignore, what lies outside the chain: a NaN or inf in padding must not reach the gradient.
        emissions = emissions.masked_fill(~prefix[:, :, None], 0.0)
        if tags is not None:
            # Masked-out tags may be anything (-100): replace them by a valid index before anything indexes with them.
            tags = tags.long().gather(1, order).masked_fill(~prefix, 0)  # (B, L)
        return emissions, tags, prefix, lengths

    def _log_partition(self, emissions: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """log Z (B,) of compacted emissions (B, L, C) by the forward algorithm; 0 for an empty chain."""
        L = emissions.shape[1]
        if L == 0:
            return emissions.sum(dim=(1, 2))  # (B,) zeros that keep the graph: backward() works on any batch
        start, trans, end = self._scores(DISALLOWED)
        # alpha[b, j]: log of the summed exp(score) of every chain prefix ending in tag j at this position
        alpha = start + emissions[:, 0]  # (B, C)
        for t in range(1, L):
            # (B, C, 1) + (C, C) + (B, 1, C) -> (B, C, C) [b, from, to], summed over `from`
            nxt = torch.logsumexp(alpha[:, :, None] + trans + emissions[:, t, None, :], dim=1)  # (B, C)
            alpha = torch.where(prefix[:, t, None], nxt, alpha)  # a row whose chain has ended keeps its alpha
        log_z = torch.logsumexp(alpha + end, dim=1)  # (B,)
        return log_z.masked_fill(~prefix[:, 0], 0.0)

    def _score(
        self, emissions: torch.Tensor, tags: torch.Tensor, prefix: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The score (B,) of the tag sequences (B, L) under compacted emissions (B, L, C); 0 for an empty chain."""
        L = emissions.shape[1]
        if L == 0:
            return emissions.sum(dim=(1, 2))  # (B,) zeros, as in _log_partition
        start, trans, end = self._scores(DISALLOWED)
        emitted = emissions.gather(2, tags[:, :, None]).squeeze(2)  # (B, L), 0 outside the chain
        linked = trans[tags[:, :-1], tags[:, 1:]].masked_fill(~prefix[:, 1:], 0.0)  # (B, L-1) links inside the chain
        last = tags.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # (B,)
        score = start[tags[:, 0]] + emitted.sum(dim=1) + linked.sum(dim=1) + end[last]  # (B,)
        return score.masked_fill(~prefix[:, 0], 0.0)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z (B,): the log of the summed exp(score) of every allowed tag sequence over the selected positions."""
        emissions, _, prefix, _ = self._compact(emissions, mask)
        return self._log_partition(emissions, prefix)

    def score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The score (B,) of `tags` (B, T) at the selected positions of `mask` (B, T); emissions (B, T, C)."""
        emissions, compact_tags, prefix, lengths = self._compact(emissions, mask, tags)
        assert compact_tags is not None
        return self._score(emissions, compact_tags, prefix, lengths)

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The negative log-likelihood of `tags`, averaged over the batch (a float32 scalar).

        emissions (B, T, C) any float dtype, tags (B, T) long (any value where masked out, e.g. -100), mask (B, T)
        bool: the positions of the chain, in order, not necessarily a prefix. A row with no selected position adds
        0 to the sum (and still counts in the mean). Selected tags must lie in [0, C).
        """
        emissions, compact_tags, prefix, lengths = self._compact(emissions, mask, tags)
        assert compact_tags is not None
        nll = self._log_partition(emissions, prefix) - self._score(emissions, compact_tags, prefix, lengths)  # (B,)
        return nll.mean() if nll.numel() else nll.sum()

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The best allowed tag sequence of each row (Viterbi), one tag per selected position of `mask` (B, T).

        emissions (B, T, C). Raises BertkitError when a row has no allowed sequence at all (possible only with
        hand-made masks: O is always allowed in BIO and BIOES).
        """
        emissions, _, prefix, lengths = self._compact(emissions, mask)
        B, L, _ = emissions.shape
        if L == 0:
            return [[] for _ in range(B)]
        start, trans, end = self._scores(float("-inf"))
        best = start + emissions[:, 0]  # (B, C) best score of a chain prefix ending in each tag
        backpointers = []  # per position t >= 1: (B, C) the best previous tag for each tag
        for t in range(1, L):
            candidates = best[:, :, None] + trans + emissions[:, t, None, :]  # (B, C, C) [b, from, to]
            nxt, previous = candidates.max(dim=1)  # (B, C), (B, C)
            best = torch.where(prefix[:, t, None], nxt, best)
            backpointers.append(previous)
        final, last = (best + end).max(dim=1)  # (B,), (B,)
        if bool(torch.isneginf(final[lengths > 0]).any()):
            raise BertkitError("no tag sequence obeys the CRF's allowed start, transition and end masks")
        # Walk back from the last position of the longest chain. Past its own end a row keeps its last tag, and
        # starts following the backpointers at its own last position.
        path = torch.empty(B, L, dtype=torch.long, device=emissions.device)
        tag = last  # (B,)
        for t in range(L - 1, -1, -1):
            path[:, t] = tag
            if t > 0:
                previous = backpointers[t - 1].gather(1, tag[:, None]).squeeze(1)  # (B,)
                tag = torch.where(t < lengths, previous, tag)
        return [row[:n] for row, n in zip(path.tolist(), lengths.tolist(), strict=True)]
