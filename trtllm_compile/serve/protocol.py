"""OpenAI wire format: request schemas (validated with pydantic), response builders and the error JSON.

Requests are parsed by hand (`parse_request`) rather than by FastAPI, so that a body that is not UTF-8, not
JSON, or not the schema gets one clear OpenAI-style 400 naming the offending field.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trtllm_compile.runtime.sampling import SamplingParams

# Fields of the OpenAI API this server does not implement: a request that sets one to a non-default value is
# rejected (400) instead of silently answered as if it had not asked.
UNSUPPORTED_FIELDS = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "echo",
    "suffix",
    "tools",
    "functions",
    "presence_penalty",
    "frequency_penalty",
)


class OpenAIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Fields shared by completions and chat completions; unknown fields are ignored, as OpenAI's are."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, description="extension: 0 or -1 = off")
    repetition_penalty: float = Field(1.0, gt=0.0, description="extension: 1 = off")
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    best_of: int | None = Field(None, ge=1, le=1, description="only best_of=1 is supported")
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _reject_unsupported(self) -> _GenerationRequest:
        for name in UNSUPPORTED_FIELDS:
            value = (self.model_extra or {}).get(name)
            if value not in (None, False, 0, [], {}):
                raise ValueError(f"`{name}` is not supported by this server; leave it unset")
        return self

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop == "" or (isinstance(stop, list) and "" in stop):
            raise ValueError("stop strings must be non-empty (an empty one would end the request at once)")
        return stop

    def sampling_params(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_k=max(self.top_k, 0),
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
            stop=self.stop or [],  # a single string is one stop string there too
            ignore_eos=self.ignore_eos,
        )


class CompletionRequest(_GenerationRequest):
    # A string, a list of token ids, or a batch of either (one choice per prompt).
    prompt: str | list[str] | list[int] | list[list[int]]

    @model_validator(mode="after")
    def _non_empty_batch(self) -> CompletionRequest:
        if self.prompt == []:
            raise ValueError("`prompt` must not be an empty list")
        return self

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def parse_request(raw: bytes, schema: type[BaseModel]) -> Any:
    """Decode, parse and validate a request body, or raise a 400 `OpenAIError` that names the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OpenAIError(
            f"request body is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})",
            code="invalid_encoding",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise OpenAIError(f"request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError("request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise OpenAIError(problems, param=param, code="invalid_value") from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str | None, *, delta: bool, first: bool = False) -> dict:
    if not delta:
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
    message = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
    return {"index": index, "delta": message, "logprobs": None, "finish_reason": finish_reason}


def envelope(object_type: str, request_id: str, model: str, choices: list[dict], **extra: Any) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": object_type,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
