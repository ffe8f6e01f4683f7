"""Batch work's metrics reach a real Pushgateway (Debian's) when the work ends: the run's metrics
and outcome in the job's group, the last success kept apart so a failed run leaves it, and a
Pushgateway that does not answer costs a warning, never the work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from k2_etl.config import load_settings
from k2_etl.observability import batch_job
from tests.helpers import free_port
from tests.integration.stand_ins import Pushgateway


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Pushgateway]:
    server = Pushgateway(tmp_path)
    yield server
    server.stop()


def pushed(gateway: Pushgateway, job: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples in ``job``'s groups: the group's labels -> value."""
    found = {}
    for group in httpx.get(f"{gateway.url}/api/v1/metrics", timeout=10).json()["data"]:
        if group["labels"].get("job") == job and name in group:
            labels = tuple(sorted(group["labels"].items()))
            found[labels] = float(group[name]["metrics"][0]["value"])
    return found


def test_a_run_pushes_its_outcome_and_a_failure_keeps_the_last_success(gateway: Pushgateway, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, pushgateway_url=gateway.url)
    with batch_job(settings, "k2_test_job", scope="trades"):
        pass
    runs = pushed(gateway, "k2_test_job", "k2_job_last_run_succeeded")
    assert list(runs.values()) == [1.0] and [dict(k)["scope"] for k in runs] == ["trades"]
    (success,) = pushed(gateway, "k2_test_job", "k2_job_last_success_timestamp_seconds").values()

    warnings: list[str] = []
    with pytest.raises(RuntimeError, match="the work failed"), batch_job(settings, "k2_test_job", warnings.append,
                                                                          scope="trades"):  # fmt: skip
        raise RuntimeError("the work failed")
    assert list(pushed(gateway, "k2_test_job", "k2_job_last_run_succeeded").values()) == [0.0]
    assert list(pushed(gateway, "k2_test_job", "k2_job_last_success_timestamp_seconds").values()) == [success]
    assert not warnings

    with batch_job(settings, "k2_test_job", scope="trades") as run:
        run.succeeded = False  # a run that reports its failure rather than raising it
    assert list(pushed(gateway, "k2_test_job", "k2_job_last_run_succeeded").values()) == [0.0]


def test_a_pushgateway_that_does_not_answer_costs_a_warning_only(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, pushgateway_url=f"http://127.0.0.1:{free_port()}")
    warnings: list[str] = []
    with batch_job(settings, "k2_test_job", warnings.append, scope="all") as run:
        done = True
    assert done and run.succeeded is True
    assert len(warnings) == 1 and "metrics of k2_test_job not pushed to http://127.0.0.1:" in warnings[0]
