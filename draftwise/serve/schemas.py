"""Request and response bodies of the OpenAI API subset that ``draftwise serve`` speaks.

Requests accept (and ignore) OpenAI fields that do not change the answer (``user``, ``metadata``, ...),
so stock clients work unchanged; fields that would change it and that this server does not implement
(tools, response formats, logit bias, penalties) are named in :meth:`GenerationRequest.unsupported`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_serializer

from draftwise.serve.errors import APIError

MAX_MODEL_ID = 256
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*(/[A-Za-z0-9][A-Za-z0-9._:@+-]*)*")


def check_model_id(model_id: str) -> str:
    """A model id as in a path (``name`` or a hub id such as ``org/name``), else a 400: every segment
    starts with a letter or digit (no ``.``, ``..`` or empty segment), printable ASCII only."""
    if len(model_id) > MAX_MODEL_ID or not _MODEL_ID.fullmatch(model_id):
        raise APIError(400, "not a valid model id", param="model", code="invalid_model_id")
    return model_id


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is supported."""

    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: str
    content: str | list[ContentPart] | None = None


class DraftwiseOptions(_Open):
    """The compression method and its options; any field of the method's dataclass is accepted."""

    method: str | None = None
    budget: int | None = None
    window: int | None = None
    lookahead: int | None = None
    prompt_budget: int | None = None

    def options(self) -> dict[str, Any]:
        """The method options given (``method`` excluded), extra ones included."""
        return self.model_dump(exclude={"method"}, exclude_none=True)


class StreamOptions(_Open):
    include_usage: bool = False


class GenerationRequest(_Open):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    draftwise: DraftwiseOptions | None = None

    def unsupported(self) -> list[str]:
        """The fields given that would change the answer and that a generating server does not
        implement (an upstream engine may)."""
        given = {
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none"),
            "response_format": self.response_format not in (None, {"type": "text"}),
            "logit_bias": bool(self.logit_bias),
            "presence_penalty": self.presence_penalty not in (None, 0),
            "frequency_penalty": self.frequency_penalty not in (None, 0),
            "top_logprobs": self.top_logprobs not in (None, 0),
        }
        return [name for name, set_ in given.items() if set_]


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class Usage(_Open):
    """Token counts; the draftwise statistics of the generation ride along as extra fields."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a chunk adds; unset fields are left out, as OpenAI does (the last delta is ``{}``)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A text completion, or (``usage`` unset until the end) one chunk of its stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "draftwise"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
