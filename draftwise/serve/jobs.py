"""From an OpenAI request and the server's defaults to a checked :class:`~draftwise.serve.worker.Job`.

Every check that can fail on bad input runs here, before the request is queued: the method and its
options (each in its range, the lookahead within the context and this server's ``max_tokens`` limit),
``max_tokens``, sampling, stop strings, fields this server does not implement, the prompt, whether it
fits the models' contexts and the memory limit. It runs in a worker thread (templating and tokenizing
a large prompt take a while).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from draftwise.checks import (
    TooLarge,
    check_draft_room,
    check_memory,
    check_method,
    context_length,
    peak_bytes,
    vocabulary_size,
)
from draftwise.decoding import Sampler
from draftwise.generate import encode
from draftwise.methods import Method, build_method
from draftwise.methods.base import OptionError
from draftwise.serve.errors import APIError
from draftwise.serve.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DraftwiseOptions,
    GenerationRequest,
)
from draftwise.serve.worker import Job

SAMPLING_KEYS = ("max_tokens", "temperature", "top_p")
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 1024  # characters of one stop string


@dataclass(frozen=True)
class Defaults:
    """Server-side defaults: the method with its options, and sampling for requests that omit it."""

    method: str = "speckv"
    options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    @classmethod
    def parse(cls, defaults: Mapping[str, Any] | None) -> Defaults:
        """From ``{"method": ..., "budget": ..., "max_tokens": ..., ...}``; ``None`` values are unset.

        Raises ``ValueError`` if the default method cannot be built.
        """
        given = {k: v for k, v in (defaults or {}).items() if v is not None}
        sampling = {k: given.pop(k) for k in SAMPLING_KEYS if k in given}
        parsed = cls(method=given.pop("method", cls.method), options=given, **sampling)
        parsed.build_method(None)
        if not isinstance(parsed.max_tokens, int) or parsed.max_tokens < 1:
            raise ValueError(f"the default max_tokens must be a positive integer, got {parsed.max_tokens!r}")
        Sampler(parsed.temperature, parsed.top_p)
        return parsed

    def build_method(self, requested: DraftwiseOptions | None) -> Method:
        """The request's method; the default options apply only when it keeps the default method."""
        name = (requested.method if requested else None) or self.method
        options = {
            **(self.options if name == self.method else {}),
            **(requested.options() if requested else {}),
        }
        return build_method(name, **options)


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def method_error(error: ValueError | TypeError) -> APIError:
    """A bad ``draftwise`` field: the param names the option when the error does."""
    option = getattr(error, "option", None)
    return _bad(str(error), f"draftwise.{option}" if option else "draftwise", code="invalid_method")


def checked_text(text: str, param: str) -> str:
    """``text`` if it is valid Unicode (no lone surrogate such as ``"\\ud800"``), else a 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad("the text is not valid Unicode (a lone surrogate)", param) from None
    return text


def chat_prompt(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Messages as ``{"role", "content"}`` dicts for the chat template; text parts are joined."""
    if not messages:
        raise _bad("messages must hold at least one message", "messages")
    prompt = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" or part.text is None for part in content):
                raise _bad("only text content parts are supported", f"messages.{i}.content")
            content = "\n".join(part.text or "" for part in content)
        role = "system" if message.role == "developer" else message.role
        prompt.append({"role": role, "content": checked_text(content or "", f"messages.{i}.content")})
    return prompt


def completion_prompt(prompt: str | list) -> str | list[int]:
    """One prompt, as text or token ids; batches of prompts are refused."""
    if isinstance(prompt, str):
        return checked_text(prompt, "prompt")
    if prompt and all(isinstance(p, int) for p in prompt):
        return list(prompt)
    if len(prompt) == 1:
        return completion_prompt(prompt[0])
    raise _bad("give one prompt (a string or a list of token ids); batches are not supported", "prompt")


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > MAX_STOP_STRINGS:
        raise _bad(f"at most {MAX_STOP_STRINGS} stop strings, got {len(strings)}", "stop")
    if any(len(s) > MAX_STOP_LENGTH for s in strings):
        raise _bad(f"a stop string may be at most {MAX_STOP_LENGTH} characters long", "stop")
    return tuple(checked_text(s, "stop") for s in strings if s)


def _refuse_unsupported(body: GenerationRequest) -> None:
    """A 400 for fields that would change the answer if this server implemented them, so that no client
    believes they took effect."""
    if body.n not in (None, 1):
        raise _bad(f"n must be 1 (one choice per request), got {body.n}", "n")
    if body.logprobs not in (None, False, 0):
        raise _bad("logprobs are not supported", "logprobs")
    unsupported = body.unsupported()
    if unsupported:
        raise _bad(f"{unsupported[0]} is not supported by this server (it would be ignored)", unsupported[0])
    if isinstance(body, CompletionRequest):
        if body.echo:
            raise _bad("echo is not supported", "echo")
        if body.best_of not in (None, 1):
            raise _bad("best_of must be 1", "best_of")
        if body.suffix:
            raise _bad("suffix is not supported", "suffix")


def _input_ids(tokenizer, target: nn.Module, prompt: str | list, param: str) -> torch.Tensor:
    try:
        input_ids = encode(tokenizer, prompt)
    except (ValueError, TypeError) as error:
        raise _bad(str(error), param) from None
    vocab = vocabulary_size(target)
    if input_ids.numel() and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < vocab:
        raise _bad(f"token ids must be in [0, {vocab})", param)
    if input_ids.shape[1] == 0:
        raise _bad("the prompt is empty", param)
    return input_ids


def _max_tokens(requested: int | None, default: int, limit: int, room: int | None) -> int:
    if requested is None:
        return max(1, min(default, limit, room if room is not None else limit))
    if not 1 <= requested <= limit:
        raise _bad(f"max_tokens must be between 1 and {limit}, got {requested}", "max_tokens")
    return requested


def make_job(
    body: ChatCompletionRequest | CompletionRequest,
    *,
    tokenizer,
    target: nn.Module,
    defaults: Defaults,
    max_tokens_limit: int,
    max_request_bytes: int | None = None,
    draft: nn.Module | None = None,
) -> Job:
    """Check ``body`` and build its job; raise :class:`APIError` (400) naming the bad field.

    With ``max_request_bytes``, a request whose KV cache and scoring weights before anything is
    dropped (:func:`draftwise.checks.peak_bytes`: the prompt plus ``max_tokens`` or the lookahead, in
    the target or the draft) would exceed it is refused: every method pre-fills the whole prompt
    before it drops anything."""
    _refuse_unsupported(body)
    if isinstance(body, ChatCompletionRequest):
        prompt, param = chat_prompt(body.messages), "messages"
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    else:
        prompt, param = completion_prompt(body.prompt), "prompt"
        requested = body.max_tokens
    try:
        method = defaults.build_method(body.draftwise)
    except (ValueError, TypeError) as error:
        raise method_error(error) from None
    temperature = defaults.temperature if body.temperature is None else body.temperature
    top_p = defaults.top_p if body.top_p is None else body.top_p
    try:
        Sampler(temperature, top_p, body.seed)
    except ValueError as error:
        raise _bad(str(error), "temperature" if "temperature" in str(error) else "top_p") from None
    stop = _stop_strings(body.stop)
    input_ids = _input_ids(tokenizer, target, prompt, param)
    n = input_ids.shape[1]
    limit = context_length(target)
    max_tokens = _max_tokens(
        requested, defaults.max_tokens, max_tokens_limit, None if limit is None else limit - n
    )
    if method.needs_draft and method.compresses(n) and draft is None:
        raise _bad(f"{method.name} needs a draft model, and this server has none", "draftwise.method")
    try:
        need = check_method(method, target, n, max_tokens)
        if draft is not None:
            check_draft_room(draft, n, need)
    except OptionError as error:
        raise method_error(error) from None
    except ValueError as error:
        raise _bad(str(error), param, code="context_length_exceeded") from None
    if need.lookahead > max_tokens_limit:
        raise _bad(
            f"lookahead ({need.lookahead}) must be at most {max_tokens_limit}, the most tokens a request "
            "may ask for", "draftwise.lookahead", code="invalid_method",
        )  # fmt: skip
    try:
        check_memory(peak_bytes(target, draft, need, n), max_request_bytes, n, need)
    except TooLarge as error:
        raise _bad(str(error), param, code="request_too_large") from None
    return Job(input_ids, method, max_tokens, temperature, top_p, body.seed, stop)
