"""Admission control: a worker runs K2_API_THREADS requests at once, holds K2_API_QUEUE more, and
refuses the next at once (503 ``overloaded`` with ``Retry-After``).

Why: past what the machine can answer, letting requests queue only makes every answer late; with
a bounded queue the requests that are served keep their latency, and a client that is refused
knows at once to come back (the benchmark's 32-client run). gunicorn's own queue (requests beyond
its threads) is unbounded and invisible to the app, so a worker has more gunicorn threads than
K2_API_THREADS (:mod:`api.gunicorn_conf`): the waiting happens here, where it is counted.
"""

from __future__ import annotations

import threading
import time

from api import metrics
from k2_etl.errors import K2Error

RETRY_AFTER_SECONDS = 1  # a queue this short drains within a second or two


class Overloaded(K2Error):
    """The worker's queue is full, or a request waited its whole budget for its turn (503)."""


class Admission:
    """Thread-safe; one per worker. First come, first served: a request that finds others waiting
    waits behind them (``threading.Condition`` wakes waiters in order)."""

    def __init__(self, slots: int, queue: int, wait_seconds: float) -> None:
        self.slots, self.queue, self.wait_seconds = slots, queue, wait_seconds
        self._turn = threading.Condition()
        self._free = slots
        self._waiting = 0

    def enter(self) -> float:
        """Take a slot (waiting for one if need be); the seconds waited. Overloaded when the queue is full
        or no slot came within ``wait_seconds``."""
        with self._turn:
            if self._free and not self._waiting:
                self._free -= 1
                return 0.0
            if self._waiting >= self.queue:
                raise Overloaded(
                    f"the API is answering {self.slots} requests and holding {self.queue} more; ask again shortly"
                )
            started = time.monotonic()
            self._waiting += 1
            metrics.QUEUED.inc()
            try:
                while not self._free:
                    left = started + self.wait_seconds - time.monotonic()
                    if left <= 0:
                        raise Overloaded(f"no turn came within {self.wait_seconds:g} s; ask again shortly")
                    self._turn.wait(left)
                self._free -= 1
            finally:
                self._waiting -= 1
                metrics.QUEUED.dec()
            return time.monotonic() - started

    def leave(self) -> None:
        with self._turn:
            self._free += 1
            self._turn.notify()
