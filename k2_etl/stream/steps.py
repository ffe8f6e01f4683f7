"""Steps of the consumer that need a dependency, and what an exception says is failing.

The poll loop never blocks on a dependency: placing partitions, landing a batch and checking
progress each run as a :class:`Step` that, when it fails, names the dependency in `/healthz`
and in the ``k2_stream_dependency_up`` gauge, logs (when it starts failing, then at most every
:data:`LOG_EVERY_SECONDS`), and is tried again after a jittered, capped, exponential backoff.
What a failure means for the consumer's state (pausing, keeping the batch) is the caller's.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from pyiceberg.exceptions import NoSuchTableError
from sqlalchemy.exc import SQLAlchemyError

from k2_etl.config import Settings, redact_url
from k2_etl.errors import K2Error, UnavailableError
from k2_etl.observability import STREAM_DEPENDENCY_UP
from k2_etl.stream.health import Health

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 30.0  # a failing dependency is logged when it starts failing, then at most this often
BACKOFF_MAX_SECONDS = 30.0


def failure(exc: BaseException, settings: Settings) -> tuple[str, str]:
    """Which dependency an exception says is failing (the metric's label) and why, in one line for
    the health reason and the log: no SQL statements, parameters or tracebacks."""
    text = str(exc).strip().splitlines()[0].split(" [SQL: ")[0][:300] if str(exc).strip() else ""
    if isinstance(exc, K2Error):  # K2's own errors say what failed themselves
        return (exc.dependency or "other") if isinstance(exc, UnavailableError) else "other", text
    brief = f"{type(exc).__name__}: {text}"
    if isinstance(exc, SQLAlchemyError | NoSuchTableError) or type(exc).__module__.startswith("pyiceberg"):
        return "catalog", f"the catalog at K2_CATALOG_URI={redact_url(settings.catalog_uri)} failed ({brief})"
    if isinstance(exc, OSError):
        return "storage", f"the warehouse storage at K2_WAREHOUSE={settings.warehouse} failed ({brief})"
    if isinstance(exc, KafkaException | BufferError):
        return "broker", f"the Kafka broker at K2_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} failed ({brief})"
    return "unexpected", f"an unexpected error ({brief})"


@dataclass
class Step:
    """A step that needs a dependency: whether it is failing, and when to try it again."""

    what: str  # e.g. "land the batch", for the health reason
    health: Health
    settings: Settings
    failures: int = 0
    dependency: str = "unexpected"  # the metric label of what it failed on last
    down: set[str] = field(default_factory=set)  # the labels it set to 0 (1 again once it succeeds)
    retry_at: float = 0.0
    logged_at: float = float("-inf")

    def due(self) -> bool:
        return time.monotonic() >= self.retry_at

    def attempt(self, action: Callable[[], None]) -> bool:
        """Run ``action``; on failure say why (health, gauge, log) and back off. True: it succeeded."""
        try:
            action()
        except Exception as exc:  # whatever a dependency raises: never out of the poll loop
            self.dependency, why = failure(exc, self.settings)
            wait = self._failed()
            self.health.fail(self.what, self.dependency, f"cannot {self.what}: {why}")
            STREAM_DEPENDENCY_UP.labels(self.dependency).set(0)
            self.down.add(self.dependency)
            if time.monotonic() - self.logged_at >= LOG_EVERY_SECONDS:
                self.logged_at = time.monotonic()
                log.warning(
                    "%s; trying again in %.1f s (failing %d time(s) in a row)",
                    self.health.problems[self.what], wait, self.failures,
                    exc_info=self.dependency == "unexpected",
                )  # fmt: skip
            return False
        if self.failures:
            log.info("%s again after %d failed attempt(s)", self.what, self.failures)
        self.settle()
        return True

    def settle(self) -> None:
        """The step succeeded, or has nothing left to do (its batch dropped, its partitions gone):
        whatever it said was failing no longer holds."""
        self.failures, self.retry_at = 0, 0.0
        self.health.clear(self.what)
        for label in self.down:
            STREAM_DEPENDENCY_UP.labels(label).set(1)
        self.down.clear()

    def _failed(self) -> float:
        """Note a failure; the seconds until the next try (exponential, jittered, capped).

        Computed here, not by tenacity: a tenacity retry blocks its caller, and the poll loop must
        keep turning (group heartbeats, /healthz, SIGTERM) while a dependency is down."""
        self.failures += 1
        wait = random.uniform(0.5, 1.0) * min(BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(self.failures, 10))
        self.retry_at = time.monotonic() + wait
        return wait
