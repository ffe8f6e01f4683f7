"""The runner's time budget: a statement past it is interrupted by the watchdog, the next one is not."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from k2_etl.config import load_settings
from k2_etl.errors import QueryTimeout
from k2_etl.query.runner import Runner

ENDLESS = "SELECT count(*) FROM range(1000000000000) AS r(i) WHERE i % 7 = 3"


def test_a_statement_past_its_budget_is_interrupted_and_the_connection_serves_the_next(tmp_path: Path) -> None:
    runner = Runner(load_settings(home=tmp_path), 1, 0.3, time.monotonic)
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"budget of 0\.3 s"):
        runner.run(ENDLESS, {})
    assert time.monotonic() - started < 30  # interrupted, not run to its end (hours)
    assert runner.run("SELECT $n AS n", {"n": 42}).to_pylist() == [{"n": 42}]  # the one connection, not interrupted


def test_statements_within_their_budget_run_untouched_beside_one_that_is_not(tmp_path: Path) -> None:
    runner = Runner(load_settings(home=tmp_path), 2, 0.5, time.monotonic)
    failures: list[BaseException] = []

    def quick() -> None:
        try:
            for n in range(200):
                assert runner.run("SELECT $n AS n", {"n": n}).to_pylist() == [{"n": n}]
        except BaseException as error:  # reported below
            failures.append(error)

    thread = threading.Thread(target=quick)
    thread.start()
    with pytest.raises(QueryTimeout):
        runner.run(ENDLESS, {})
    thread.join()
    assert not failures
