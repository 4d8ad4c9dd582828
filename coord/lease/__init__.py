"""Leases with fencing tokens: a sans-IO grantor, a holder's view, and the fencing guard.

`LeaseGrantor` (run by the metadata leader) grants a resource to one holder at
a time for a term and stamps every new lease with a strictly increasing
`FencingToken`; `LeaseHolder` (run by the holder) says whether the lease may
be acted on now and when to renew; `FencingGuard` (run by the protected
resource) rejects requests carrying a token older than one it has accepted.
Timing safety: the holder expires epsilon early, the grantor epsilon late,
with epsilon >= drift_bound * max_duration (see docs/leases.md).
"""

from coord.lease.fencing import FenceAccepted, FenceRejected, FenceVerdict, FencingGuard
from coord.lease.grantor import LeaseGrantor
from coord.lease.holder import LeaseHolder, ReplyOutcome
from coord.lease.types import (
    NO_TOKEN,
    ConfigError,
    Denied,
    DenyReason,
    Expired,
    FencingToken,
    Granted,
    GrantResult,
    HolderId,
    LeaseConfig,
    LeaseRecord,
    LeaseRelease,
    LeaseRequest,
    Released,
    RequestId,
    RequestKind,
    ResourceId,
    Revoked,
)

__all__ = [
    "NO_TOKEN",
    "ConfigError",
    "Denied",
    "DenyReason",
    "Expired",
    "FenceAccepted",
    "FenceRejected",
    "FenceVerdict",
    "FencingGuard",
    "FencingToken",
    "GrantResult",
    "Granted",
    "HolderId",
    "LeaseConfig",
    "LeaseGrantor",
    "LeaseHolder",
    "LeaseRecord",
    "LeaseRelease",
    "LeaseRequest",
    "Released",
    "ReplyOutcome",
    "RequestId",
    "RequestKind",
    "ResourceId",
    "Revoked",
]
