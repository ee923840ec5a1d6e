"""One job on the model at a time; waiting jobs are served in arrival order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from studio.errors import CancelledError
from studio.events import CancelToken

CANCEL_POLL_SECONDS = 0.1  # how quickly a job cancelled while waiting gives up its place


class FairLock:
    """A ticket lock: `threading.Lock` wakes waiters in any order, this one strictly first come first served."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()  # tickets of jobs cancelled while waiting

    @property
    def busy(self) -> bool:
        with self._condition:
            return self._next_ticket != self._serving

    @property
    def waiting(self) -> int:
        """Jobs queued behind the current holder (cancelled ones excluded)."""
        with self._condition:
            return max(0, self._next_ticket - self._serving - 1 - len(self._abandoned))

    @contextmanager
    def hold(self, cancel: CancelToken | None = None) -> Iterator[None]:
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                if cancel is not None and cancel.cancelled:
                    self._abandoned.add(ticket)
                    raise CancelledError("Cancelled while waiting for the previous job to finish.")
                self._condition.wait(timeout=CANCEL_POLL_SECONDS)
        try:
            yield
        finally:
            with self._condition:
                self._serving += 1
                while self._serving in self._abandoned:
                    self._abandoned.remove(self._serving)
                    self._serving += 1
                self._condition.notify_all()
