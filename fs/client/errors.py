"""The one place where the client library turns failures into `FsError`.

Everything below `NetworkFs` raises what its layer raises: `FsError` from
the metadata service (via MetaClient), `coord.rpc` errors from chunk
servers, `trio.TooSlowError` when an operation's time bound runs out.
`translate` maps each to an errno once, and `NetworkFs`'s edge (and each
background flush) calls it - nothing else in fs/client picks errnos for
transport failures.

Mapping (see docs/fs-client.md):

| failure | errno |
| --- | --- |
| `FsError` | unchanged |
| the time bound ran out (`trio.TooSlowError`), `coord.rpc.Timeout`, `KvTimeout` | ETIMEDOUT |
| chunk server `ENOSPC` | ENOSPC |
| every other `RemoteError` (CHECKSUM, STALE_*, EIO, BAD_ARGS ...) that survived the retries | EIO |
| unreachable servers, lost connections, expired replies, protocol and authentication errors | EIO |
| `OSError` | EIO |

Anything else is a bug and is not translated (the FUSE edge logs it with a
traceback and answers EIO).
"""

from __future__ import annotations

import errno

import trio

from coord.kv.remote import KvError, KvTimeout
from coord.rpc import RemoteError, RpcError, Timeout
from fs.chunk import protocol as cp
from fs.types import FsError

TRANSLATED: tuple[type[BaseException], ...] = (
    FsError, trio.TooSlowError, RpcError, KvError, OSError,
)


def translate(exc: BaseException, what: str = "") -> FsError:
    """The FsError for a failure of one of the kinds in TRANSLATED."""
    if isinstance(exc, FsError):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, trio.TooSlowError):
        return FsError(errno.ETIMEDOUT, f"{prefix}the operation timed out")
    if isinstance(exc, Timeout | KvTimeout):
        return FsError(errno.ETIMEDOUT, f"{prefix}{exc}")
    if isinstance(exc, RemoteError) and exc.code == cp.ENOSPC:
        return FsError(errno.ENOSPC, f"{prefix}{exc}")
    if isinstance(exc, RpcError | KvError | OSError):
        return FsError(errno.EIO, f"{prefix}{exc}")
    raise TypeError(f"not a translatable failure: {exc!r}") from exc


def is_unreachable(exc: BaseException) -> bool:
    """The server did not answer at all (down, partitioned, or too slow)."""
    return isinstance(exc, RpcError) and not isinstance(exc, RemoteError)
