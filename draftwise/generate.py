"""One call to generate with a draft's help: ``generate(target, draft, tokenizer, prompt, method)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from draftwise.attention import WRAPPED_IMPLEMENTATIONS
from draftwise.batching import BatchDecoder, Row
from draftwise.cache import cache_bytes, full_cache_bytes, kept_per_head
from draftwise.checks import (
    TooLarge,
    check_architecture,
    check_draft_room,
    check_method,
    check_same_vocabulary,
    reserved_kv_bytes,
)
from draftwise.decoding import Answer, Sampler, decode, stop_token_ids
from draftwise.mapping import same_tokenizer, tokenize
from draftwise.methods import Full, Method
from draftwise.prefill import Prefill, prefill
from draftwise.readers import OwnTokenizerReader, SameTokenizerReader
from draftwise.shared_prefill import SharedPrefill
from draftwise.speculative import (
    Drafter,
    PromptLookup,
    SpeculativeConfig,
    SpeculativeStats,
    check_speculative,
    speculative_decode,
)
from draftwise.text_stream import TextStream
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
    lookahead_accepted: int  # of those, tokens the target accepted as the answer's first
    new_tokens: int
    draft_seconds: float
    prefill_seconds: float
    decode_seconds: float  # with speculative decoding, the draft's work for it included
    time_to_first_token: float
    total_seconds: float
    speculative_drafted: int = 0  # tokens the draft proposed while decoding (speculative decoding)
    speculative_accepted: int = 0  # of those, tokens the target accepted

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
    speculative: SpeculativeConfig | None = None,
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
        speculative: decode speculatively with ``draft`` (:class:`~draftwise.SpeculativeConfig`):
            the draft proposes tokens from its own cache of the whole prompt and the target verifies
            them in one forward over its (compressed) cache. The answer is the same (greedy) or
            distributed the same (sampling) as without it. Needs a draft with the target's tokenizer.
    """
    plan = plan_generation(
        target, draft, tokenizer, prompt, method, max_new_tokens, reuse, draft_tokenizer, speculative
    )
    sampler = Sampler(temperature, top_p, seed)
    start = now()
    ready = compress(target, plan, sampler)
    # With `reuse`, the shared pre-fill and lookahead ran before `start`; their seconds count as if alone.
    time_to_first_token = max(now() - start, ready.draft_seconds + ready.prefill_seconds)
    prefilled = ready.prefilled
    answer = Answer(max_new_tokens, plan.stop_ids, on_token)
    ended = any(answer.take(token) for token in prefilled.accepted)  # verified lookahead: the first tokens
    accepted, decode_seconds = len(answer.tokens), 0.0
    drafting = SpeculativeStats()
    if not ended:
        decode_start = now()
        position = ready.kept_length + accepted
        if speculative is None:
            tokens = decode(
                target,
                prefilled.cache,
                prefilled.logits,
                position,
                answer.room,
                sampler,
                plan.stop_ids,
                on_token=on_token,
                first_token=prefilled.next_token,
            )
            answer.tokens += tokens[0].tolist()
        else:
            proposer, shared_seconds = make_proposer(plan, draft, speculative, sampler)
            decode_start -= shared_seconds  # counted as if this call had run the draft's pre-fill
            speculative_decode(
                target, prefilled.cache, prefilled.logits, position, answer, proposer, sampler,
                prefilled.next_token, drafting,
            )  # fmt: skip
        decode_seconds = now() - decode_start
    token_ids = answer.tokens
    stats = ready.stats(plan, len(token_ids), time_to_first_token, decode_seconds, accepted, drafting)
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return GenerationResult(text=text, token_ids=token_ids, stats=stats)


def make_proposer(
    plan: Plan, draft: nn.Module | None, config: SpeculativeConfig, sampler: Sampler
) -> tuple[Drafter | PromptLookup, float]:
    """Who proposes for speculative decoding, and the seconds to count for it beyond the time this call
    took: what a shared draft pre-fill (a benchmark's) cost, less the copy that stood in for it."""
    if config.proposer == "lookup":
        return PromptLookup(plan.input_ids, config), 0.0
    start = now()
    cache, seconds = plan.reader.prompt_cache(config.draft_method)
    return Drafter(draft, cache, plan.prompt_length, config, sampler), seconds - (now() - start)


@dataclass
class Plan:
    """A generation checked and ready to run: nothing computed yet."""

    method: Method
    input_ids: torch.Tensor  # [1, n] the prompt in the target's tokens
    max_new_tokens: int
    stop_ids: frozenset[int]
    reader: SameTokenizerReader | OwnTokenizerReader  # the draft, reading the prompt
    reuse: SharedPrefill | None
    speculative: SpeculativeConfig | None = None

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]


def reserved_bytes(
    target: nn.Module,
    draft: nn.Module | None,
    method: Method,
    prompt_length: int,
    max_new_tokens: int,
    speculative: SpeculativeConfig | None = None,
) -> int:
    """KV bytes one generation may hold: what ``method`` keeps and the new tokens
    (:func:`~draftwise.checks.reserved_kv_bytes`); with ``speculative``, ``k`` more tokens read on
    trial and, when the draft proposes, the draft's own cache of the prompt."""
    if speculative is None:
        return reserved_kv_bytes(target, method, prompt_length, max_new_tokens)
    most = max_new_tokens + speculative.k
    total = reserved_kv_bytes(target, method, prompt_length, most)
    if speculative.proposer == "draft" and draft is not None:
        total += reserved_kv_bytes(draft, speculative.draft_method or Full(), prompt_length, most)
    return total


def plan_generation(
    target: nn.Module,
    draft: nn.Module | None,
    tokenizer,
    prompt: Prompt,
    method: Method | None,
    max_new_tokens: int,
    reuse: SharedPrefill | None = None,
    draft_tokenizer=None,
    speculative: SpeculativeConfig | None = None,
) -> Plan:
    """Check everything about one generation before any work: the method, the models, the prompt and
    whether it fits (:func:`generate`'s arguments)."""
    method = method if method is not None else Full()
    if not isinstance(method, Method):
        raise TypeError(f"method must be a draftwise method such as SpecKV(budget=256), got {method!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    check_architecture(target, "target")
    input_ids = encode(tokenizer, prompt)
    n = input_ids.shape[1]
    if n == 0:
        raise ValueError("the prompt is empty")
    need = check_method(method, target, n, max_new_tokens)
    stops = frozenset(stop_token_ids(tokenizer, target))
    reader: SameTokenizerReader | OwnTokenizerReader = SameTokenizerReader(draft, input_ids, stops, reuse)
    if method.needs_draft and method.compresses(n):
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
    if speculative is not None:
        same = draft_tokenizer is None or same_tokenizer(tokenizer, draft_tokenizer)
        check_speculative(speculative, target, draft, same, n, max_new_tokens)
    return Plan(method, input_ids, max_new_tokens, stops, reader, reuse, speculative)


@dataclass
class Compressed:
    """What a method left to decode from: the target's (pruned) cache after the prompt it read."""

    prefilled: Prefill
    kept_length: int  # prompt tokens the target read
    lookahead_tokens: int
    draft_seconds: float
    prefill_seconds: float
    # what the cache held after pre-fill (and pruning), before decoding grows it
    kv_pairs_kept: int
    kv_bytes: int
    kv_bytes_full: int  # an uncompressed cache of the whole prompt

    def stats(
        self,
        plan: Plan,
        new_tokens: int,
        time_to_first_token: float,
        decode_seconds: float,
        lookahead_accepted: int,
        drafting: SpeculativeStats | None = None,
    ) -> GenerationStats:
        """The stats of a generation that decoded ``new_tokens`` from this, ``drafting`` its speculative
        decoding's tally (``None``: none)."""
        drafting = drafting or SpeculativeStats()
        return GenerationStats(
            method=plan.method.name,
            prompt_tokens=plan.prompt_length,
            prompt_tokens_kept=self.kept_length,
            kv_pairs_kept=self.kv_pairs_kept,
            kv_bytes=self.kv_bytes,
            kv_bytes_full=self.kv_bytes_full,
            lookahead_tokens=self.lookahead_tokens,
            lookahead_accepted=lookahead_accepted,
            new_tokens=new_tokens,
            draft_seconds=self.draft_seconds,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=decode_seconds,
            time_to_first_token=time_to_first_token,
            total_seconds=time_to_first_token + decode_seconds,
            speculative_drafted=drafting.drafted,
            speculative_accepted=drafting.accepted,
        )


@torch.no_grad()
def compress(target: nn.Module, plan: Plan, sampler: Sampler | None = None) -> Compressed:
    """Run ``plan``'s method: the draft's work, then the target's pre-fill and pruning (and its verdict
    on the lookahead, drawn with ``sampler`` when it samples)."""
    method, input_ids, reuse, reader = plan.method, plan.input_ids, plan.reuse, plan.reader
    n = plan.prompt_length
    kept_ids, lookahead_ids, draft_seconds = input_ids, None, 0.0
    prompt_stage, kv_stage = method.prompt_stage(), method.kv_stage()
    if prompt_stage is not None and prompt_stage.compresses(n):
        kept, draft_seconds = reader.keep_tokens(prompt_stage)
        kept_ids, lookahead_ids = input_ids[:, kept.positions], kept.lookahead_ids
    # the shared pre-fill is of the whole prompt: a prompt method's shorter one is its own
    shared_prefill = reuse if reuse is not None and kept_ids is input_ids else None
    if kv_stage is not None and kv_stage.compresses(kept_ids.shape[1]):
        steps = kv_stage.lookahead_length(plan.max_new_tokens)
        if steps and lookahead_ids is None:
            lookahead_ids, seconds = reader.lookahead(steps)
            draft_seconds += seconds
        lookahead_ids = lookahead_ids if steps else None
        taken = 0 if lookahead_ids is None else lookahead_ids.shape[1]
        sparse = kv_stage.sparse_for(kept_ids.shape[1], taken, target.device)
        if shared_prefill is not None and not sparse:
            prefilled, prefill_seconds = shared_prefill.prefill(
                target, kept_ids, kv_stage, lookahead_ids, sampler
            )
        else:
            prefilled, prefill_seconds = _timed(prefill, target, kept_ids, kv_stage, lookahead_ids, sampler)
    elif shared_prefill is not None:
        prefilled, prefill_seconds = shared_prefill.prefill(target, kept_ids, None, None)
    else:
        prefilled, prefill_seconds = _timed(prefill, target, kept_ids)
    lookahead_tokens = 0 if lookahead_ids is None else lookahead_ids.shape[1]
    cache = prefilled.cache
    return Compressed(
        prefilled,
        kept_ids.shape[1],
        lookahead_tokens,
        draft_seconds,
        prefill_seconds,
        kept_per_head(cache),
        cache_bytes(cache),
        full_cache_bytes(cache, n),
    )


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt of :func:`generate_batch` with its own settings; ``None`` takes the call's."""

    prompt: Prompt
    method: Method | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()  # stop strings: the text ends before the first one


def _or(value, default):
    return default if value is None else value


@torch.no_grad()
def generate_batch(
    target: nn.Module,
    draft: nn.Module | None,
    tokenizer,
    prompts: Sequence[Prompt | GenerationRequest],
    method: Method | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    max_batch: int | None = None,
    max_memory: int | None = None,
    draft_tokenizer=None,
    progress: bool = False,
    speculative: SpeculativeConfig | None = None,
) -> list[GenerationResult]:
    """Answer several prompts, decoding them together: one :class:`GenerationResult` per prompt, in order.

    Each prompt is compressed on its own (its draft work and pre-fill, one prompt at a time, so the
    peak is one prompt's), then the rows decode together, one batched forward per step over their
    pruned caches, each at its own true positions; a finished row leaves the batch at once. With
    greedy decoding each row's tokens are the ones :func:`generate` gives for that prompt alone (up
    to floating-point reduction order); sampling is seeded per row.

    Args:
        prompts: each a prompt as :func:`generate` takes it, or a :class:`GenerationRequest` carrying
            its own method, sampling settings, token limit and stop strings.
        method, max_new_tokens, temperature, top_p, seed, stop: the settings of prompts that do not set
            their own. A shared ``seed`` seeds every row alike.
        max_batch: most rows decoding at once; the next prompt is compressed and joins when a row
            leaves (continuous batching). ``None``: every prompt at once.
        max_memory: bytes of KV cache the batch may hold (rows are padded to the longest kept length):
            a batch that could exceed it is refused before any work.
        progress: a progress bar over the prompts compressed and the rows finished.
        speculative: decode speculatively, as :func:`generate` does: each row's proposals (from its
            own draft cache, or looked up in its prompt) are verified in the batch's forward, every
            row keeping what its target accepts.
    Needs ``eager`` or ``sdpa`` attention in the target.
    """
    if (
        is_messages(prompts)
        or isinstance(prompts, (str, torch.Tensor))
        or (isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts))
    ):
        raise TypeError("prompts must be a list of prompts, e.g. [text] or [messages], not one prompt")
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts is empty: pass a list of at least one prompt")
    if max_batch is not None and not (
        isinstance(max_batch, int) and not isinstance(max_batch, bool) and max_batch > 0
    ):
        raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
    implementation = target.config._attn_implementation
    if implementation not in WRAPPED_IMPLEMENTATIONS:
        raise ValueError(f"batched decoding needs 'eager' or 'sdpa' attention, not {implementation!r}")
    plans, samplers, stops = [], [], []
    for i, item in enumerate(prompts):
        request = item if isinstance(item, GenerationRequest) else GenerationRequest(item)
        try:
            plans.append(
                plan_generation(
                    target,
                    draft,
                    tokenizer,
                    request.prompt,
                    _or(request.method, method),
                    _or(request.max_new_tokens, max_new_tokens),
                    None,
                    draft_tokenizer,
                    speculative,
                )
            )
            sampling = (
                _or(request.temperature, temperature),
                _or(request.top_p, top_p),
                _or(request.seed, seed),
            )
            samplers.append(Sampler(*sampling))
            stops.append(_stop_strings(request.stop or stop))
        except (ValueError, TypeError) as error:
            raise type(error)(f"prompt {i}: {error}") from error
    width = len(plans) if max_batch is None else min(max_batch, len(plans))
    check_batch_memory(target, draft, plans, width, max_memory)

    start = now()
    results: list[GenerationResult | None] = [None] * len(plans)
    decoder = BatchDecoder(target)
    waiting = list(range(len(plans)))
    running: dict[int, tuple[int, Compressed, TextStream, float]] = {}  # id(row) -> its prompt and state
    with tqdm(total=len(plans), desc="generate_batch", unit="prompt", disable=not progress) as bar:

        def finish(row: Row) -> None:
            index, ready, text, first = running.pop(id(row))
            text.finish()
            stats = ready.stats(
                plans[index], len(row.tokens), first - start, now() - first, row.accepted, row.drafting
            )
            results[index] = GenerationResult(text=text.text, token_ids=row.tokens, stats=stats)
            bar.update(1)

        while waiting or decoder.rows:
            while waiting and len(decoder.rows) < width:
                index = waiting.pop(0)
                plan = plans[index]
                ready = compress(target, plan, samplers[index])
                text = TextStream(tokenizer, stops[index])
                row = Row.after(ready.prefilled, ready.kept_length, plan.max_new_tokens, samplers[index])
                row.stop_ids, row.on_token = plan.stop_ids, _stopper(text)
                if speculative is not None:
                    row.proposer = make_proposer(plan, draft, speculative, samplers[index])[0]
                running[id(row)] = (index, ready, text, now())
                if not decoder.add(row):  # done at its first token
                    finish(row)
            for row in decoder.step():
                finish(row)
    return results  # type: ignore[return-value]


def _stop_strings(stop: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    if not all(isinstance(s, str) for s in stop):
        raise TypeError(f"stop must be a list of strings, got {stop!r}")
    return tuple(s for s in stop if s)


def _stopper(text: TextStream) -> Callable[[int], bool]:
    def on_token(token: int) -> bool:
        text.feed(token)
        return text.stopped

    return on_token


def check_batch_memory(
    target: nn.Module, draft: nn.Module | None, plans: Sequence[Plan], width: int, limit: int | None
) -> None:
    """Raise :class:`~draftwise.checks.TooLarge` if ``width`` rows could hold more KV bytes than ``limit``:
    every row is padded to the widest row's kept prompt and new tokens (:func:`reserved_bytes`)."""
    if limit is None:
        return
    reserved = [
        reserved_bytes(target, draft, p.method, p.prompt_length, p.max_new_tokens, p.speculative)
        for p in plans
    ]
    needed = width * max(reserved)  # any row may be the widest
    if needed > limit:
        positions = max(p.method.kept_length(p.prompt_length) + p.max_new_tokens for p in plans)
        raise TooLarge(
            f"this batch may hold about {needed / 2**20:.2f} MiB of KV cache ({width} rows of up to "
            f"{positions} positions), over max_memory of {limit / 2**20:.2f} MiB: pass fewer prompts or a "
            "smaller max_batch, or compress more"
        )
