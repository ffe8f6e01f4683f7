"""The one retry policy for a commit that lost a race.

An Iceberg commit fails with ``CommitFailedException`` when another writer committed first
(the consumer beside a compaction, two consumers evolving a schema, an expiry beside an
append). The losing commit is made again on fresh metadata, after a short jittered backoff so
that racing writers spread out; a few attempts suffice because each race is lost to a commit
that took well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pyiceberg.exceptions import CommitFailedException
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

F = TypeVar("F", bound=Callable[..., Any])


def retry_lost_commits(attempts: int = 10) -> Callable[[F], F]:
    """Decorate a function that commits: called again (up to ``attempts`` times in all) while it
    raises ``CommitFailedException``; the last one is raised as it is."""
    return retry(  # type: ignore[return-value]
        retry=retry_if_exception_type(CommitFailedException),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.05, max=2),
        reraise=True,
    )
