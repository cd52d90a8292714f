from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ClassifyRequest(BaseModel):
    """Zero-shot: classify texts against label names or {label: description}."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["The match went to extra time", "Parliament passed the bill"],
         "labels": ["sport", "politics"]},
        {"texts": ["Cheap flights and a beach hotel"], "multi_label": True, "threshold": 0.5,
         "labels": {"travel": "travel, holidays and flights", "finance": "money, prices and banking"}},
    ]})

    texts: list[str]
    labels: list[str] | dict[str, str] = Field(description="at least 2 labels; with descriptions, "
                                               "the description is what is compared to the text")
    model: str | None = None
    multi_label: bool = False
    temperature: float | None = Field(None, ge=0.001, le=10.0,
                                      description="single-label softmax temperature over cosine "
                                      "similarities (default 0.035, fitted on held-out data)")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="multi-label: minimum score of a "
                             "returned label")


class ZeroShotResult(BaseModel):
    label: str | None = None
    labels: list[str] | None = None
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    results: list[ZeroShotResult]


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    label: str


class FinetuneOptions(BaseModel):
    """SetFit-style fine-tuning knobs (defaults: the SetFit recipe at a small budget)."""
    model_config = ConfigDict(extra="forbid")
    pairs_per_example: int = Field(20, ge=2, le=100, multiple_of=2, description="contrastive pairs "
                                   "per example: half positive (same label), half negative")
    epochs: int = Field(1, ge=1, le=5, description="passes over the pairs")
    learning_rate: float = Field(2e-5, gt=0.0, le=1e-3, description="AdamW learning rate "
                                 "(10 % linear warm-up, then linear decay)")
    batch_size: int = Field(16, ge=4, le=64, description="pairs per optimisation step")
    max_seq_length: int = Field(128, ge=16, le=512, description="tokens per text while training "
                                "(capped at the encoder's max_length; prediction uses the full length)")


class TrainRequest(BaseModel):
    """PUT /v1/classifiers/{name}: train (or retrain) a classifier from labelled examples."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "minilm", "examples": [
            {"text": "What a wonderful film", "label": "positive"},
            {"text": "I loved every minute", "label": "positive"},
            {"text": "Dull and far too long", "label": "negative"},
            {"text": "A waste of an evening", "label": "negative"}]}]})

    model: str | None = None
    examples: list[Example]
    labels: list[str] | dict[str, str] | None = Field(
        None, description="optional: the label set (every label needs examples) and/or label "
        "descriptions used as the zero-shot prior; default: the labels of the examples")
    prior_weight: float = Field(1.0, ge=0.0, le=5.0, description="weight of the label-name prior "
                                "(0 = off; use 0 for opaque label names such as '0'/'1')")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    background: bool | None = Field(None, description="train as a job; default: yes above 300 "
                                    "examples, always with finetune")
    finetune: bool = Field(False, description="SetFit-style contrastive fine-tuning of the encoder "
                           "on the examples before the head is trained (needs the build extra; runs "
                           "as a background job in a child process; at most 2000 examples)")
    finetune_options: FinetuneOptions | None = Field(None, description="only with finetune: true")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str]


class Prediction(BaseModel):
    label: str
    scores: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class KnnRequest(BaseModel):
    """POST /v1/collections/{name}/classify: vote of the k nearest labelled documents."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["rocket engine test"], "label_field": "topic", "k": 10}]})

    texts: list[str]
    label_field: str = Field(min_length=1, max_length=256,
                             description="metadata field holding the label (dotted path allowed)")
    k: int = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(None, description="restrict the neighbours")
    model: str | None = Field(None, description="default: the collection's encoder")


class KnnResult(BaseModel):
    label: str | None
    scores: dict[str, float]
    neighbors: int = Field(description="labelled neighbours that voted")


class KnnResponse(BaseModel):
    results: list[KnnResult]
