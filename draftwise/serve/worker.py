"""Generations in worker threads: admitted up to a queue limit, run a few at a time, streamed as events.

``generate`` is blocking torch code. :class:`Engine` runs each admitted :class:`Job` in a thread pool of
``max_concurrency`` threads; a :class:`Generation` sends what its thread produces (:class:`Delta`, then
:class:`Finished` or :class:`Failed`) to the event loop through an ``asyncio.Queue``. Cancelling a
generation (its client went away) frees its place in the queue at once if it is waiting, or makes its
next ``on_token`` raise if it runs, so the thread and its slot are freed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from draftwise.decoding import stop_token_ids
from draftwise.generate import GenerationResult, GenerationStats, generate
from draftwise.methods import Method
from draftwise.serve.admission import WorkerPool
from draftwise.serve.text import TextStream


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
    """One job's run: its thread side (:meth:`run`) and its event-loop side (:attr:`events`)."""

    def __init__(self, engine: Engine, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.job, self._loop = engine, job, loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.task: asyncio.Task | None = None  # waiting for a slot, then running the thread
        self.started = False

    def cancel(self) -> None:
        """Stop at the next token, or leave the queue at once if still waiting; no more events come.
        Called on the event loop."""
        self._cancelled.set()
        if self.task is not None and not self.started:
            self.task.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def start_or_skip(self) -> bool:
        """Called when a thread is free: ``True`` (skip) if cancelled meanwhile, else marks it started."""
        if self.cancelled:
            return True
        self.started = True
        return False

    def _emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self._cancelled.set()

    def _generate(self, on_token: Callable[[int], bool]) -> GenerationResult:
        engine, job = self.engine, self.job
        return generate(
            engine.target,
            engine.draft,
            engine.tokenizer,
            job.input_ids,
            method=job.method,
            max_new_tokens=job.max_tokens,
            temperature=job.temperature,
            top_p=job.top_p,
            seed=job.seed,
            on_token=on_token,
        )

    def run(self) -> None:
        """Generate in the calling (worker) thread, emitting events."""
        engine, job = self.engine, self.job
        text = TextStream(engine.tokenizer, job.stop)

        def on_token(token_id: int) -> bool:
            if self._cancelled.is_set():
                raise _Cancelled
            delta = text.feed(token_id)
            if delta:
                self._emit(Delta(delta))
            return text.stopped  # a stop string: generation ends here, with its stats

        try:
            with engine.lock.hold(job.method.swaps_attention):
                result = self._generate(on_token)
        except _Cancelled:
            return
        except Exception as error:  # bad input found by generate, or a bug: the app decides
            self._emit(Failed(error))
            return
        tail = text.finish()
        if tail:
            self._emit(Delta(tail))
        ended = bool(result.token_ids) and result.token_ids[-1] in engine.eos_ids
        reason = "stop" if text.stopped or ended else "length"
        self._emit(Finished(reason, len(result.token_ids), result.stats))


class ModelLock:
    """Generations sharing the models: any number of ordinary ones at once, or one that switches the
    models' attention implementation (:attr:`Method.swaps_attention`) alone. Waiting exclusive
    generations go first, so they are not starved."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        with self._condition:
            if exclusive:
                self._exclusive_waiting += 1
                self._condition.wait_for(lambda: not self._exclusive and self._shared == 0)
                self._exclusive_waiting -= 1
                self._exclusive = True
            else:
                self._condition.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
                self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._condition.notify_all()


class Engine:
    """The models and the :class:`~draftwise.serve.admission.WorkerPool` their generations run in: at
    most ``max_concurrency`` at once, and at most ``max_queue`` more admitted.

    A request is admitted (:meth:`admit`, :class:`~draftwise.serve.admission.Busy` if full) before its
    prompt is read, then :meth:`submit` takes over its admission, or :meth:`release` returns it."""

    def __init__(
        self, target: nn.Module, draft: nn.Module | None, tokenizer, max_concurrency: int, max_queue: int
    ) -> None:
        self.target, self.draft, self.tokenizer = target, draft, tokenizer
        self.eos_ids = stop_token_ids(tokenizer, target)
        self.pool = WorkerPool(
            max_concurrency, max_queue, "requests running or waiting", "draftwise-generate"
        )
        self.lock = ModelLock()
        self._tasks: set[asyncio.Task] = set()
        self._generations: set[Generation] = set()

    def admit(self) -> None:
        """Take a place (running or waiting); :class:`~draftwise.serve.admission.Busy` if none."""
        self.pool.admit()

    def release(self) -> None:
        """Give back a place taken by :meth:`admit` for a request that will not be submitted."""
        self.pool.release()

    @property
    def running(self) -> int:
        return self.pool.running

    @property
    def waiting(self) -> int:
        return self.pool.waiting

    def submit(self, job: Job) -> Generation:
        """Start an admitted ``job`` as soon as a slot is free; its place is freed when it ends."""
        generation = Generation(self, job, asyncio.get_running_loop())
        task = asyncio.create_task(self._run(generation))
        generation.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return generation

    async def _run(self, generation: Generation) -> None:
        self._generations.add(generation)
        try:
            await self.pool.run(generation.run, skip=generation.start_or_skip)
        except asyncio.CancelledError:
            generation.cancel()
            raise
        finally:
            self._generations.discard(generation)

    def close(self) -> None:
        """Cancel every generation and stop the threads (at their next token)."""
        for generation in list(self._generations):
            generation.cancel()
        self.pool.close()
