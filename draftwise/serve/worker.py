r"""Generations decoded together: one scheduler thread owns the models (continuous batching).

The scheduler takes admitted :class:`Job`\ s in order, compresses one (its draft work and pre-fill)
between two decoding steps, and adds it to the running batch
(:class:`~draftwise.batching.BatchDecoder`), as vLLM and Orca do: up to ``max_batch`` rows decode
together, one forward per step, and a finished row leaves at once. With ``kv_cache_memory``, a job
waits until the batch with it would hold at most that many bytes of KV cache: each row reserves what
its method keeps plus its ``max_tokens`` (:func:`~draftwise.generate.reserved_bytes`: with speculative
decoding also the tokens read on trial and the draft's cache), and rows are padded to the widest, so a
SpecKV@256 row reserves a small part of what a Full one does.

A :class:`Generation` sends what the scheduler produces for it (:class:`Delta`, then
:class:`Finished` or :class:`Failed`) to the event loop through an ``asyncio.Queue``. Cancelling it (its
client went away) drops it from the queue, or takes its row out of the batch before the next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

import torch
from torch import nn

from draftwise.batching import BatchDecoder, Row
from draftwise.checks import TooLarge
from draftwise.decoding import Sampler, stop_token_ids
from draftwise.generate import (
    Compressed,
    GenerationStats,
    Plan,
    compress,
    make_proposer,
    plan_generation,
    reserved_bytes,
)
from draftwise.methods import Method
from draftwise.serve.admission import Admission
from draftwise.speculative import SpeculativeConfig
from draftwise.text_stream import TextStream
from draftwise.timing import now


@dataclass(frozen=True)
class Job:
    """One checked request: everything ``generate`` needs, and the stop strings."""

    input_ids: torch.Tensor  # [1, n]
    method: Method
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
    stats: GenerationStats


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Delta | Finished | Failed


class _Cancelled(Exception):
    pass


class Generation:
    """One job: its scheduler side (:meth:`on_token`, :meth:`emit`) and its event-loop side
    (:attr:`events`, :meth:`cancel`)."""

    def __init__(self, engine: Engine, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.job, self._loop = engine, job, loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.text = TextStream(engine.tokenizer, job.stop)
        self.reserved = reserved_bytes(
            engine.target,
            engine.draft,
            job.method,
            job.input_ids.shape[1],
            job.max_tokens,
            engine.speculative,
        )
        # set by the scheduler when the job starts
        self.plan: Plan | None = None
        self.ready: Compressed | None = None
        self.started = 0.0
        self.first_token = 0.0
        self._done = False

    def cancel(self) -> None:
        """No more events: the job leaves the queue, or its row the batch, before the next step. Called
        on the event loop."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self.engine.wake()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self._cancelled.set()

    def on_token(self, token_id: int) -> bool:
        if self._cancelled.is_set():
            raise _Cancelled
        if not self.first_token:
            self.first_token = now()
        delta = self.text.feed(token_id)
        if delta:
            self.emit(Delta(delta))
        return self.text.stopped  # a stop string: the row ends here, with its stats

    def done(self) -> None:
        """Give back the request's place (once)."""
        if not self._done:
            self._done = True
            with suppress(RuntimeError):  # the event loop is closed: nothing to give back
                self._loop.call_soon_threadsafe(self.engine.release)


class Engine:
    """The models and the scheduler thread that runs every generation on them.

    At most ``max_batch`` requests decode at once and ``max_queue`` more wait; beyond them
    :meth:`admit` raises :class:`~draftwise.serve.admission.Busy` (429) before the prompt is read. A
    request is admitted, then :meth:`submit` takes over its place (freed when it ends), or
    :meth:`release` returns it.
    """

    def __init__(
        self,
        target: nn.Module,
        draft: nn.Module | None,
        tokenizer,
        max_batch: int,
        max_queue: int,
        kv_cache_memory: int | None = None,
        speculative: SpeculativeConfig | None = None,
    ) -> None:
        self.target, self.draft, self.tokenizer = target, draft, tokenizer
        self.speculative = speculative
        self.eos_ids = stop_token_ids(tokenizer, target)
        self.max_batch, self.kv_cache_memory = max_batch, kv_cache_memory
        self.admission = Admission(max_batch + max_queue, "requests running or waiting")
        self.decoder = BatchDecoder(target)
        self._rows: dict[int, tuple[Row, Generation]] = {}  # id(row) -> row, generation
        self._queue: deque[Generation] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---- the event loop's side ----

    def admit(self) -> None:
        """Take a place (running or waiting); :class:`~draftwise.serve.admission.Busy` if none."""
        self.admission.admit()

    def release(self) -> None:
        """Give back a place taken by :meth:`admit`."""
        self.admission.release()

    @property
    def running(self) -> int:
        """Rows decoding now."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return self.admission.count - self.running

    @property
    def reserved_bytes(self) -> int:
        """KV bytes the running rows reserve (padded to the widest row)."""
        return self._batch_bytes([generation for _, generation in self._rows.values()])

    def submit(self, job: Job) -> Generation:
        """Queue an admitted ``job``; it starts when the batch has room for it."""
        generation = Generation(self, job, asyncio.get_running_loop())
        limit = self.kv_cache_memory
        if limit is not None and generation.reserved > limit:
            message = (
                f"this request reserves {generation.reserved / 2**20:.2f} MiB of KV cache (what "
                f"{job.method.name} keeps of {job.input_ids.shape[1]} prompt tokens, plus max_tokens), "
                f"over the server's kv_cache_memory of {limit / 2**20:.2f} MiB"
            )
            generation.emit(Failed(TooLarge(message)))
            generation.done()
            return generation
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="draftwise-scheduler", daemon=True)
                self._thread.start()
            self._queue.append(generation)
            self._condition.notify()
        return generation

    def wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def close(self) -> None:
        """Stop the scheduler (after its current step); nothing more is sent."""
        with self._condition:
            self._closed = True
            self._condition.notify()

    # ---- the scheduler thread ----

    def _batch_bytes(self, generations: list[Generation]) -> int:
        return len(generations) * max((g.reserved for g in generations), default=0)

    def _next_job(self) -> Generation | None:
        """The first queued job, if the batch has room for it (rows and memory); cancelled ones leave."""
        while self._queue and self._queue[0].cancelled:
            self._queue.popleft().done()
        if not self._queue or len(self._rows) >= self.max_batch:
            return None
        candidate = self._queue[0]
        if self.kv_cache_memory is not None:
            batch = [generation for _, generation in self._rows.values()] + [candidate]
            if self._rows and self._batch_bytes(batch) > self.kv_cache_memory:
                return None  # it waits for rows to finish
        return self._queue.popleft()

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._closed or self._queue or self._rows)
                if self._closed:
                    return
                job = self._next_job()
            for row, generation in list(self._rows.values()):
                if generation.cancelled:
                    self.decoder.remove(row)
                    self._finish(row)
            if job is not None:
                self._start(job)
            if self.decoder.rows:
                try:
                    finished = self.decoder.step()
                except Exception as error:  # a bug or out of memory: every row of this batch fails
                    self._fail_batch(error)
                    continue
                for row in finished:
                    self._finish(row)

    def _fail_batch(self, error: Exception) -> None:
        """A step failed: its cache may be half-updated, so the whole batch ends with the error."""
        self.decoder = BatchDecoder(self.target)
        for row, _ in list(self._rows.values()):
            row.error = error
            self._finish(row)

    def _start(self, generation: Generation) -> None:
        job = generation.job
        generation.started = now()
        try:
            plan = plan_generation(
                self.target, self.draft, self.tokenizer, job.input_ids, job.method, job.max_tokens,
                speculative=self.speculative,
            )  # fmt: skip
            sampler = Sampler(job.temperature, job.top_p, job.seed)
            generation.plan, generation.ready = plan, compress(self.target, plan, sampler)
            proposer = None
            if self.speculative is not None:
                proposer = make_proposer(plan, self.draft, self.speculative, sampler)[0]
        except Exception as error:  # bad input found by generate, or a bug: the app decides
            generation.emit(Failed(error))
            generation.done()
            return
        ready = generation.ready
        row = Row.after(ready.prefilled, ready.kept_length, job.max_tokens, sampler)
        row.stop_ids, row.on_token = plan.stop_ids, generation.on_token
        row.proposer = proposer
        self._rows[id(row)] = (row, generation)
        if not self.decoder.add(row):
            self._finish(row)

    def _finish(self, row: Row) -> None:
        _, generation = self._rows.pop(id(row))
        try:
            if generation.cancelled or isinstance(row.error, _Cancelled):
                return
            if row.error is not None:
                generation.emit(Failed(row.error))  # type: ignore[arg-type]
                return
            tail = generation.text.finish()
            if tail:
                generation.emit(Delta(tail))
            ended = bool(row.tokens) and row.tokens[-1] in self.eos_ids
            reason = "stop" if generation.text.stopped or ended else "length"
            first = generation.first_token or now()
            stats = generation.ready.stats(
                generation.plan, len(row.tokens), first - generation.started, now() - first, row.accepted,
                row.drafting,
            )  # fmt: skip
            generation.emit(Finished(reason, len(row.tokens), stats))
        finally:
            generation.done()
