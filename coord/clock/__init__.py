"""Logical and physical clocks: Lamport clocks (stamped on every RPC message),
vector clocks (DSM intervals), NTP/Cristian-style offset estimation."""

from coord.clock.lamport import LamportClock

__all__ = ["LamportClock"]
