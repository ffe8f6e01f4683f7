"""Admission control: so many requests at once, so many waiting in order, the next refused at once."""

from __future__ import annotations

import threading
import time

import pytest

from api.admission import Admission, Overloaded


def test_a_full_queue_refuses_at_once_and_a_freed_slot_goes_to_the_first_waiting() -> None:
    gate = Admission(slots=1, queue=2, wait_seconds=30)
    assert gate.enter() == 0.0  # a free slot: no wait
    order: list[str] = []
    waiting: list[threading.Thread] = []
    for name in ("first", "second"):

        def wait(name: str = name) -> None:
            gate.enter()
            order.append(name)
            gate.leave()

        thread = threading.Thread(target=wait)
        thread.start()
        waiting.append(thread)
        deadline = time.monotonic() + 10
        while gate._waiting < len(waiting):  # the queue, polled until the thread is in it
            assert time.monotonic() < deadline, "the request never queued"
            time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(Overloaded, match="answering 1 requests and holding 2 more"):
        gate.enter()
    assert time.monotonic() - started < 1  # refused, not made to wait
    gate.leave()
    for thread in waiting:
        thread.join(timeout=10)
    assert order == ["first", "second"]
    assert gate.enter() == 0.0  # every slot back


def test_a_request_that_waits_its_whole_budget_is_refused() -> None:
    gate = Admission(slots=1, queue=5, wait_seconds=0.05)
    gate.enter()
    with pytest.raises(Overloaded, match=r"no turn came within 0\.05 s"):
        gate.enter()
    gate.leave()
    assert gate.enter() == 0.0


def test_no_queue_refuses_the_first_request_beyond_the_slots() -> None:
    gate = Admission(slots=2, queue=0, wait_seconds=30)
    gate.enter()
    gate.enter()
    with pytest.raises(Overloaded):
        gate.enter()
