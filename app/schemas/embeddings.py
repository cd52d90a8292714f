from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingsRequest(BaseModel):
    """OpenAI-compatible embeddings request."""
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "minilm", "input": ["The cat sat on the mat.", "A feline rested on a rug."]},
        {"input": "a single sentence", "encoding_format": "base64"},
    ]})

    input: Union[str, list[str], list[int], list[list[int]]] = Field(
        ..., description="A text or a list of texts (token-id arrays are not supported)")
    model: str | None = Field(None, description='Encoder name, or "auto" to route each text to its '
                              'domain encoder; default: the default encoder')
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the encoder's dimension if given")
    user: str | None = Field(None, max_length=256)


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]
    truncated: bool = Field(False, description="Input was cut to the model's max length or the character limit")
    route: dict[str, Any] | None = Field(None, description='model="auto" only: {"model", "domain", "confidence"} chosen for this text')


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage
