"""OpenAI response bodies and stream chunks, for chat completions and text completions alike."""

from __future__ import annotations

import json
import time
import uuid

from pydantic import BaseModel

from draftwise.generate import GenerationStats
from draftwise.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    Usage,
)

DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int, stats: GenerationStats | None) -> Usage:
    """Token counts and, when there are any, the generation's draftwise statistics."""
    extra = {}
    if stats is not None:
        extra = {k: v for k, v in stats.as_dict().items() if k not in ("prompt_tokens", "new_tokens")}
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        **extra,
    )


def sse(data: BaseModel | dict) -> str:
    """One server-sent event."""
    text = data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)
    return f"data: {text}\n\n"


class Formatter:
    """Builds one response's bodies; ``chat`` picks chat-completion or text-completion shapes."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def response(self, text: str, finish_reason: str, counts: Usage) -> BaseModel:
        if self.chat:
            choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish_reason)
            return ChatCompletion(
                id=self.id, created=self.created, model=self.model, choices=[choice], usage=counts
            )
        choice = CompletionChoice(text=text, finish_reason=finish_reason)
        return Completion(id=self.id, created=self.created, model=self.model, choices=[choice], usage=counts)

    def chunk(
        self, text: str | None = None, finish_reason: str | None = None, role: bool = False
    ) -> BaseModel:
        """A stream chunk with new text, or the role (chat's first chunk), or the finish reason."""
        if self.chat:
            delta = ChatDelta(role="assistant" if role else None, content=text)
            choice = ChatChunkChoice(delta=delta, finish_reason=finish_reason)
            return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])
        choice = CompletionChoice(text=text or "", finish_reason=finish_reason)
        return Completion(id=self.id, created=self.created, model=self.model, choices=[choice])

    def usage_chunk(self, counts: Usage) -> BaseModel:
        """The last chunk when the client asked for ``stream_options.include_usage``: no choices."""
        kind = ChatCompletionChunk if self.chat else Completion
        return kind(id=self.id, created=self.created, model=self.model, choices=[], usage=counts)
