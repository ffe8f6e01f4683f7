"""The tests' port picker: a platform's ports are distinct, and no port is handed out twice.

A CI run failed when the broker and the API were given one port: picked one at a time (bind
port 0, close, repeat), the operating system may offer the same port again before either is used.
"""

from __future__ import annotations

from tests.helpers import free_port, free_ports


def test_ports_are_distinct_and_never_handed_out_twice() -> None:
    first = free_ports(40)
    assert len(set(first)) == 40
    again = [*free_ports(40), *(free_port() for _ in range(40))]
    assert len(set(again)) == 80 and not set(first) & set(again)
