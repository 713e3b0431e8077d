"""The endpoints' request bodies as pydantic models. Numbers must be finite (NaN and infinities are
refused), unknown fields are ignored as OpenAI's API ignores them, and a body that does not fit is a
400 naming each field (:func:`parse`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import HttpError

Coordinate = Annotated[float, Field(ge=-1e6, le=1e6)]
ImageValue = str | dict[str, Any]  # a data URI, or {"url": data URI}


class Request(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")
    model: str = Field(min_length=1, max_length=256)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageValue | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(max_length=64)]


class Generation(Request):
    max_tokens: int | None = Field(None, ge=1, le=1 << 16)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 16)
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=1 << 63)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=8)


class ChatRequest(Generation):
    messages: list[Message] = Field(min_length=1, max_length=256)
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}: a last chunk with the usage


class CaptionRequest(Generation):
    image: ImageValue
    prompt: str | None = None


class EmbeddingsRequest(Request):
    input: str | list[str | ContentPart] = Field(min_length=1, max_length=256)
    encoding_format: Literal["float", "base64"] = "float"


class ClassifyRequest(Request):
    image: ImageValue
    labels: list[str] = Field(min_length=1, max_length=1000)


class MatchRequest(Request):
    image: ImageValue
    text: str = Field(min_length=1)


class SamEmbedRequest(Request):
    image: ImageValue


class SamSegmentRequest(Request):
    image_id: str | None = None
    image: ImageValue | None = None
    points: list[tuple[Coordinate, Coordinate]] | None = Field(None, max_length=64)
    labels: list[Literal[0, 1]] | None = Field(None, max_length=64)
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = None
    mask_input: list[list[float]] | None = Field(None, max_length=1024)
    multimask: bool = True
    format: Literal["rle", "png"] = "rle"


class SamMasksRequest(Request):
    image: ImageValue
    points_per_side: int = Field(16, ge=1, le=64)
    pred_iou_thresh: float = Field(0.88, ge=-1e6, le=1e6)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    format: Literal["rle", "png"] = "rle"


Body = TypeVar("Body", bound=Request)


def parse(kind: type[Body], data: Any) -> Body:
    """``data`` (decoded JSON) as ``kind``, or a 400 that names every field that does not fit."""
    if not isinstance(data, dict):
        raise HttpError(400, f"the body must be a JSON object, found {type(data).__name__}")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:8])
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise HttpError(400, f"the request does not fit {kind.__name__}: {problems}",
                        str(first[0]) if first else None) from None


def generation_options(body: Generation) -> dict:
    """A request's sampling fields as the runtime's generation settings. Left out, each is the
    bundle's default (greedy decoding, its own answer length); ``temperature`` 0 is greedy."""
    options: dict[str, Any] = {}
    limit = body.max_completion_tokens or body.max_tokens
    if limit is not None:
        options["max_new_tokens"] = limit
    if body.temperature:
        options.update(do_sample=True, temperature=body.temperature)
        if body.top_p is not None:
            options["top_p"] = body.top_p
    if body.seed is not None:
        options["seed"] = body.seed
    if body.stop:
        stops = [body.stop] if isinstance(body.stop, str) else body.stop
        if len(stops) > 4 or not all(stops):
            raise HttpError(400, f"stop takes up to 4 non-empty strings, found {body.stop!r}", "stop")
        options["stop_strings"] = tuple(stops)
    return options
