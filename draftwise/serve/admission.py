"""Admission: how many requests the server takes on at once; beyond that, 429 before any work."""

from __future__ import annotations


class Busy(Exception):
    """Every place is taken: the client should retry later (429 with ``Retry-After``)."""


class Admission:
    """At most ``limit`` requests admitted at once (running, waiting, or in flight upstream)."""

    def __init__(self, limit: int, what: str) -> None:
        if limit < 1:
            raise ValueError(f"the limit of {what} must be at least 1, got {limit}")
        self.limit, self.what = limit, what
        self.count = 0

    def admit(self) -> None:
        """Take a place; :class:`Busy` if all ``limit`` are taken."""
        if self.count >= self.limit:
            raise Busy(f"{self.count} {self.what}, the most this server takes")
        self.count += 1

    def release(self) -> None:
        self.count -= 1
