"""Logical and physical clocks: Lamport clocks (stamped on every RPC message),
vector clocks (DSM intervals), NTP/Cristian-style offset estimation."""

from coord.clock.lamport import LamportClock
from coord.clock.offset import (
    NoValidSample,
    OffsetEstimate,
    OffsetEstimator,
    OffsetSample,
    estimate_offset,
    relative_drift_bound,
)
from coord.clock.vector import Order, VectorClock

__all__ = [
    "LamportClock",
    "NoValidSample",
    "OffsetEstimate",
    "OffsetEstimator",
    "OffsetSample",
    "Order",
    "VectorClock",
    "estimate_offset",
    "relative_drift_bound",
]
