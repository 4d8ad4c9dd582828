"""tools.proclaunch.free_ports: distinct, bindable, outside the ephemeral range."""

from __future__ import annotations

import socket

from tools.proclaunch import _ephemeral_low, free_ports


def test_ports_are_distinct_bindable_below_the_ephemeral_range_and_not_reused() -> None:
    first, second = free_ports(8), free_ports(8)
    assert len(set(first)) == len(set(second)) == 8
    assert not set(first) & set(second)  # never handed out twice by one process
    low = _ephemeral_low()
    if low >= 12_000:  # Linux defaults (32768): outgoing connections never take these
        assert all(10_000 <= p < low for p in first + second)
    for port in first:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
