"""The API's request and response shapes as pydantic models: they document the endpoints in `/openapi.json`.

Requests are parsed and checked by `Service` (its messages name the field that is wrong), not by these models, so
a bad request gets the same one-line `{"error": ...}` whatever it got wrong.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from bertkit.constants import TOP_K
from bertkit.serve.limits import MAX_TOP_K


class PredictRequest(BaseModel):
    """Inputs of the task model (their fields: `GET /api/info`'s "input"); one input may also come alone."""

    inputs: list[dict[str, Any]] = Field(description='one object per input, e.g. {"text": "..."}')


class TextsRequest(BaseModel):
    """Texts to embed (or `{"text": "..."}` for one)."""

    texts: list[str]


class FillMaskRequest(BaseModel):
    """Texts with [MASK]s, and how many candidates to return per [MASK]."""

    texts: list[str]
    top_k: int = Field(TOP_K, ge=1, le=MAX_TOP_K)


class PredictResponse(BaseModel):
    """One prediction per input: {"label", "probabilities"}, {"score"}, {"tags", "entities"} or {"id", "answer",
    "start", "end", "score"}, as the task predicts."""

    predictions: list[dict[str, Any]]


class Candidate(BaseModel):
    """One token the model puts at a [MASK], with its probability."""

    token: str
    score: float


class FillMaskResult(BaseModel):
    """A text's candidates: one list per [MASK], best first."""

    text: str
    masks: list[list[Candidate]]
    truncated: bool | None = Field(
        None, description="true for a text longer than the model's maximum length: its [MASK]s were read with the "
        "context before the cut alone; absent otherwise"
    )  # fmt: skip


class FillMaskResponse(BaseModel):
    """One result per text, in the order sent."""

    results: list[FillMaskResult]


class EmbedResponse(BaseModel):
    """One vector of `dim` numbers per text, in the order sent (L2-normalised mean pooling, or what the model's
    sentence-transformers settings say)."""

    embeddings: list[list[float]]
    dim: int
    truncated: list[int] | None = Field(
        None, description="positions of the texts longer than the model's maximum length, of which only the first "
        "tokens were embedded; absent when none was cut"
    )  # fmt: skip


class Status(BaseModel):
    """What /healthz and /readyz answer when all is well: {"status": "ok"}."""

    status: str


class ErrorResponse(BaseModel):
    """Every refusal: what was wrong and what to send instead, on one line."""

    error: str
