"""One call to generate with a draft's help: ``generate(target, draft, tokenizer, prompt, method)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from draftwise.cache import cache_bytes, full_cache_bytes, kept_per_head
from draftwise.checks import check_architecture, check_draft_room, check_method, check_same_vocabulary
from draftwise.decoding import Sampler, decode, stop_token_ids
from draftwise.mapping import same_tokenizer, tokenize
from draftwise.methods import Full, Method
from draftwise.prefill import prefill
from draftwise.readers import OwnTokenizerReader, SameTokenizerReader
from draftwise.shared_prefill import SharedPrefill
from draftwise.timing import now

Prompt = str | Sequence[dict] | Sequence[int] | torch.Tensor


@dataclass
class GenerationStats:
    """What a generation kept and what each stage cost. Seconds are wall-clock."""

    method: str
    prompt_tokens: int  # tokens of the prompt as given
    prompt_tokens_kept: int  # tokens the target read (fewer with SpecPC)
    kv_pairs_kept: int  # per KV head in each full-attention layer, after pre-fill
    kv_bytes: int  # K and V bytes held after pre-fill (and pruning)
    kv_bytes_full: int  # K and V bytes a full cache of the whole prompt holds
    lookahead_tokens: int
    new_tokens: int
    draft_seconds: float
    prefill_seconds: float
    decode_seconds: float
    time_to_first_token: float
    total_seconds: float

    @property
    def kv_fraction(self) -> float:
        return self.kv_bytes / self.kv_bytes_full if self.kv_bytes_full else 1.0

    def as_dict(self) -> dict:
        return {**asdict(self), "kv_fraction": self.kv_fraction}


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    stats: GenerationStats


def encode(tokenizer, prompt: Prompt) -> torch.Tensor:
    """Token ids ``[1, n]`` of a prompt: text as is, chat messages through the chat template."""
    if isinstance(prompt, torch.Tensor):
        ids = prompt.reshape(1, -1) if prompt.dim() == 1 else prompt
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"token ids must be [n] or [1, n], got shape {tuple(prompt.shape)}")
        return ids.long().cpu()
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        return tokenize(tokenizer, prompt)
    if is_messages(prompt):
        if not any(isinstance(m.get("content"), str) and m["content"].strip() for m in prompt):
            raise ValueError("the chat messages are empty")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat template: pass the prompt as plain text")
        return tokenize(tokenizer, prompt)
    if isinstance(prompt, Sequence) and all(isinstance(t, int) for t in prompt):
        return torch.tensor([list(prompt)], dtype=torch.long)
    raise TypeError(
        "prompt must be a string, a list of chat messages ({'role': ..., 'content': ...}) or token ids; "
        f"got {type(prompt).__name__}"
    )


def is_messages(prompt: object) -> bool:
    return isinstance(prompt, Sequence) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def _timed(fn, *args, **kwargs):
    start = now()
    result = fn(*args, **kwargs)
    return result, now() - start


@torch.no_grad()
def generate(
    target: nn.Module,
    draft: nn.Module | None,
    tokenizer,
    prompt: Prompt,
    method: Method | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_token: Callable[[int], bool | None] | None = None,
    reuse: SharedPrefill | None = None,
    draft_tokenizer=None,
) -> GenerationResult:
    """Generate an answer to ``prompt`` with ``target``, compressed by ``method`` with ``draft``'s help.

    Args:
        target: the model whose answer is wanted (a transformers causal LM).
        draft: a smaller model; needed by SpecKV, SpecPC, SpecKV-PC. It shares the target's
            tokenizer, or comes with its own ``draft_tokenizer``.
        tokenizer: the target's tokenizer.
        prompt: text (tokenized as is), chat messages (through the chat template) or token ids.
        method: :class:`~draftwise.Full` (default), :class:`~draftwise.SpecKV`,
            :class:`~draftwise.SpecPC`, :class:`~draftwise.SpecKVPC`, or a baseline
            (:class:`~draftwise.SnapKV`, :class:`~draftwise.StreamingLLM`, ...).
        max_new_tokens: most tokens to generate; generation stops early at an end-of-sequence token.
        temperature, top_p, seed: sampling; ``temperature=0`` (default) is greedy.
        on_token: called with each new token id as soon as it is chosen, for streaming; returning
            ``True`` ends generation after that token (a stop string), and an exception it raises (a
            client went away) stops generation and propagates.
        reuse: a :class:`~draftwise.shared_prefill.SharedPrefill` shared by calls on the same prompt
            (benchmarks): the target's plain pre-fill and the draft's lookaheads are computed once;
            answers are unchanged, and each call's seconds still include the shared work.
        draft_tokenizer: the draft's tokenizer, when it is not the target's. The draft then reads the
            prompt (text or messages) in its own format; SpecPC's scores reach the target's tokens
            through the characters they cover, and SpecKV's lookahead through its text.
    """
    method = method if method is not None else Full()
    if not isinstance(method, Method):
        raise TypeError(f"method must be a draftwise method such as SpecKV(budget=256), got {method!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    sampler = Sampler(temperature, top_p, seed)
    check_architecture(target, "target")
    input_ids = encode(tokenizer, prompt)
    n = input_ids.shape[1]
    if n == 0:
        raise ValueError("the prompt is empty")
    need = check_method(method, target, n, max_new_tokens)
    compresses = method.compresses(n)
    stops = stop_token_ids(tokenizer, target)
    reader: SameTokenizerReader | OwnTokenizerReader = SameTokenizerReader(draft, input_ids, stops, reuse)
    if method.needs_draft and compresses:
        if draft is None:
            raise ValueError(f"{method.name} needs a draft model; pass draft=...")
        check_architecture(draft, "draft")
        if draft_tokenizer is not None and not same_tokenizer(tokenizer, draft_tokenizer):
            if not (isinstance(prompt, str) or is_messages(prompt)):
                raise ValueError("a draft with another tokenizer needs the prompt as text or chat messages")
            reader = OwnTokenizerReader(draft, draft_tokenizer, tokenizer, prompt)
        else:
            check_same_vocabulary(target, draft)
        check_draft_room(draft, reader.length, need)
    start = now()

    kept_ids, lookahead_ids, draft_seconds = input_ids, None, 0.0
    prompt_stage, kv_stage = method.prompt_stage(), method.kv_stage()
    if prompt_stage is not None and prompt_stage.compresses(n):
        kept, draft_seconds = reader.keep_tokens(prompt_stage)
        kept_ids, lookahead_ids = input_ids[:, kept.positions], kept.lookahead_ids
    # the shared pre-fill is of the whole prompt: a prompt method's shorter one is its own
    shared_prefill = reuse if reuse is not None and kept_ids is input_ids else None
    if kv_stage is not None and kv_stage.compresses(kept_ids.shape[1]):
        steps = kv_stage.lookahead_length(max_new_tokens)
        if steps and lookahead_ids is None:
            lookahead_ids, seconds = reader.lookahead(steps)
            draft_seconds += seconds
        lookahead_ids = lookahead_ids if steps else None
        taken = 0 if lookahead_ids is None else lookahead_ids.shape[1]
        sparse = kv_stage.sparse_for(kept_ids.shape[1] + taken)
        if shared_prefill is not None and not sparse:
            prefilled, prefill_seconds = shared_prefill.prefill(target, kept_ids, kv_stage, lookahead_ids)
        else:
            prefilled, prefill_seconds = _timed(prefill, target, kept_ids, kv_stage, lookahead_ids)
    elif shared_prefill is not None:
        prefilled, prefill_seconds = shared_prefill.prefill(target, kept_ids, None, None)
    else:
        prefilled, prefill_seconds = _timed(prefill, target, kept_ids)
    kv_bytes = cache_bytes(prefilled.cache)
    kv_pairs = kept_per_head(prefilled.cache)
    # With `reuse`, the shared pre-fill and lookahead ran before `start`; their seconds count as if alone.
    time_to_first_token = max(now() - start, draft_seconds + prefill_seconds)

    tokens, decode_seconds = _timed(
        decode,
        target,
        prefilled.cache,
        prefilled.logits,
        kept_ids.shape[1],
        max_new_tokens,
        sampler,
        stops,
        on_token=on_token,
    )
    token_ids = tokens[0].tolist()
    stats = GenerationStats(
        method=method.name,
        prompt_tokens=n,
        prompt_tokens_kept=kept_ids.shape[1],
        kv_pairs_kept=kv_pairs,
        kv_bytes=kv_bytes,
        kv_bytes_full=full_cache_bytes(prefilled.cache, n),
        lookahead_tokens=0 if lookahead_ids is None else lookahead_ids.shape[1],
        new_tokens=len(token_ids),
        draft_seconds=draft_seconds,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        time_to_first_token=time_to_first_token,
        total_seconds=time_to_first_token + decode_seconds,
    )
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return GenerationResult(text=text, token_ids=token_ids, stats=stats)
