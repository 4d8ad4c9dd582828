"""A linearizability checker for histories of concurrent client operations.

`check(history, model, time_budget_s)` returns a `CheckResult` whose verdict
is OK, VIOLATION (with a readable explanation: the partition, the longest
linearizable prefix, the operation that could not be placed) or TIMEOUT.
TIMEOUT is never a pass: `assert_linearizable` raises on it as on a
violation.  Histories are split into independent partitions by the model
(per key for `KvModel`), and each is searched with Wing & Gong's algorithm
and Lowe's memoisation; see `search` for the invariants.

This is a test tool, not a protocol core: it reads `time.monotonic` by
default (injectable) and does no other I/O.
"""

from coord.lincheck.history import PENDING, ClientId, History, Operation, OpId
from coord.lincheck.model import KvModel, Model, Partition
from coord.lincheck.search import (
    CheckResult,
    CheckTimedOut,
    LinearizabilityError,
    NotLinearizable,
    Verdict,
    assert_linearizable,
    check,
)

__all__ = [
    "PENDING",
    "CheckResult",
    "CheckTimedOut",
    "ClientId",
    "History",
    "KvModel",
    "LinearizabilityError",
    "Model",
    "NotLinearizable",
    "OpId",
    "Operation",
    "Partition",
    "Verdict",
    "assert_linearizable",
    "check",
]
