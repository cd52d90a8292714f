from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimilarityRequest(BaseModel):
    """Either one source against many targets, or all pairs between two lists."""
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"source": "How do I reset my password?",
         "targets": ["Resetting a forgotten password", "Opening hours of the shop"]},
        {"texts_a": ["heart attack", "stroke"], "texts_b": ["myocardial infarction", "brain hemorrhage"]},
    ]})

    model: str | None = None
    source: str | None = None
    targets: list[str] | None = None
    texts_a: list[str] | None = None
    texts_b: list[str] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "SimilarityRequest":
        one = self.source is not None or self.targets is not None
        matrix = self.texts_a is not None or self.texts_b is not None
        if one == matrix:
            raise ValueError("give either source + targets, or texts_a + texts_b")
        if one and (self.source is None or self.targets is None):
            raise ValueError("source and targets must both be given")
        if matrix and (self.texts_a is None or self.texts_b is None):
            raise ValueError("texts_a and texts_b must both be given")
        return self


class SimilarityResponse(BaseModel):
    model: str
    scores: list[float] | None = Field(None, description="source form: cosine score per target, in order")
    matrix: list[list[float]] | None = Field(None, description="pairs form: matrix[i][j] = cos(texts_a[i], texts_b[j])")
    truncated: list[int] = Field(default_factory=list, description="indices (in the order texts were sent) that were truncated")


class PairsRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"texts": ["The cat sits outside", "A man is playing guitar", "The cat is sitting outdoors"],
         "threshold": 0.7, "top_k": 10}]})

    model: str | None = None
    texts: list[str]
    threshold: float = Field(0.75, ge=-1.0, le=1.0, description="minimum cosine score of a reported pair")
    top_k: int = Field(100, ge=1, le=100_000, description="at most this many pairs, best first")


class Pair(BaseModel):
    i: int
    j: int
    score: float


class PairsResponse(BaseModel):
    model: str
    pairs: list[Pair]
