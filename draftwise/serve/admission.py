"""Admission: how many requests the server takes on at once; beyond that, 429 before any work.

:class:`Admission` counts places (the batch scheduler's requests, upstream mode's forwarded ones);
:class:`WorkerPool` adds the threads that run upstream mode's compressions a few at a time, and
:class:`ModelUse` keeps a compression that swaps the draft's attention alone on the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


class Busy(Exception):
    """Every place is taken: the client should retry later (429 with ``Retry-After``)."""


class Admission:
    """At most ``limit`` requests admitted at once (running, waiting, or in flight upstream). The limits
    are checked once, in :class:`~draftwise.serve.settings.ServerSettings`."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what = limit, what
        self.count = 0

    def admit(self) -> None:
        """Take a place; :class:`Busy` if all ``limit`` are taken."""
        if self.count >= self.limit:
            raise Busy(f"{self.count} {self.what}, the most this server takes")
        self.count += 1

    def release(self) -> None:
        self.count -= 1


class WorkerPool:
    """Blocking work in ``max_concurrency`` threads, with at most ``max_queue`` more requests waiting.

    A request takes a place with :meth:`admit` (:class:`Busy` if none is left) before any work, then
    :meth:`run` holds it until its work is done. A caller cancelled while waiting for a thread leaves
    at once; one cancelled while its work runs leaves the thread to finish (a thread cannot be
    stopped: the work must notice and return early), and the place and thread are freed then.
    """

    def __init__(self, max_concurrency: int, max_queue: int, what: str, thread_name: str) -> None:
        self.max_concurrency = max_concurrency
        self.admission = Admission(max_concurrency + max_queue, what)
        self.running = 0
        self._slots: asyncio.Semaphore | None = None  # made on the event loop that first runs work
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix=thread_name)

    @property
    def waiting(self) -> int:
        return self.admission.count - self.running

    def admit(self) -> None:
        """Take a place (running or waiting); :class:`Busy` if there is none."""
        self.admission.admit()

    def release(self) -> None:
        """Give back a place taken by :meth:`admit` for work that will not :meth:`run`."""
        self.admission.release()

    async def run(self, fn: Callable[..., Any], *args: Any, skip: Callable[[], bool] | None = None) -> Any:
        """``fn(*args)`` in a worker thread once one is free, for an admitted request; its place is
        released when the work ends. ``skip()``, asked when a thread is free, says the work is no
        longer wanted (``None`` is returned and nothing runs)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        slots = self._slots
        try:
            await slots.acquire()
        except BaseException:
            self.admission.release()
            raise
        if skip is not None and skip():
            slots.release()
            self.admission.release()
            return None
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

        def done(_: asyncio.Future) -> None:
            self.running -= 1
            slots.release()
            self.admission.release()

        future.add_done_callback(done)
        return await asyncio.shield(future)

    def close(self) -> None:
        """Stop taking work; work not started is dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class ModelUse:
    """Threads sharing one model: any number at once, or one alone (one that switches the model's
    attention implementation, :class:`~draftwise.attention.AttentionOverride`, changes it for every
    thread). A thread waiting to be alone goes before threads that come after it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharing = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def use(self, alone: bool) -> Iterator[None]:
        with self._changed:
            if alone:
                self._waiting_alone += 1
                self._changed.wait_for(lambda: not self._alone and self._sharing == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._changed.wait_for(lambda: not self._alone and self._waiting_alone == 0)
                self._sharing += 1
        try:
            yield
        finally:
            with self._changed:
                if alone:
                    self._alone = False
                else:
                    self._sharing -= 1
                self._changed.notify_all()
