"""Failure detection: a fixed-timeout detector and a phi-accrual detector, both sans-IO.

Both implement `FailureDetector`: feed `heartbeat(peer, now)`, poll
`check(now)` for `Suspect`/`Recover` events (each with a reason to log).
Suspicions can be false; see coord/failure/types.py and docs/leases.md.
"""

from coord.failure.phi import PhiAccrualDetector, PhiConfig, phi
from coord.failure.timeout import DetectorConfigError, TimeoutConfig, TimeoutDetector
from coord.failure.types import DetectorEvent, FailureDetector, PeerId, Recover, Suspect

__all__ = [
    "DetectorConfigError",
    "DetectorEvent",
    "FailureDetector",
    "PeerId",
    "PhiAccrualDetector",
    "PhiConfig",
    "Recover",
    "Suspect",
    "TimeoutConfig",
    "TimeoutDetector",
    "phi",
]
