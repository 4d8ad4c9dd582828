"""Distributed mutual exclusion: one interface, three sans-IO cores.

    async with service.hold("lock-name") as grant:   # coord.mutex.driver.MutexService
        write(resource, grant.token)                 # the resource fences stale tokens

Cores (one per lock; events in, effects out; no I/O, time is an argument):
    Centralized      elected coordinator with a FIFO queue (3 messages per entry)
    RicartAgrawala   Lamport-stamped broadcast (2(n-1) messages per entry)
    TokenRing        a circulating token with epochs (1 message per entry under load)

Every grant is a lease with a fencing token (coord.lease): safety is "no two
unexpired holders at once", and the protected resource refuses stale tokens
with a `FencingGuard`.  See docs/mutex.md.
"""

from coord.mutex.centralized import Centralized
from coord.mutex.ricart import RicartAgrawala
from coord.mutex.ring import TokenRing
from coord.mutex.types import (
    INITIAL_EPOCH,
    Effect,
    Enter,
    Epoch,
    Grant,
    HighestTrusted,
    LeaderView,
    LeaseOver,
    LockName,
    MutexConfig,
    MutexConfigError,
    MutexCore,
    NodeId,
    Note,
    Send,
)

__all__ = [
    "INITIAL_EPOCH",
    "Centralized",
    "Effect",
    "Enter",
    "Epoch",
    "Grant",
    "HighestTrusted",
    "LeaderView",
    "LeaseOver",
    "LockName",
    "MutexConfig",
    "MutexConfigError",
    "MutexCore",
    "NodeId",
    "Note",
    "RicartAgrawala",
    "Send",
    "TokenRing",
]
