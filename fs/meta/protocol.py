"""The RPC methods of the metadata servers for the file system: `fs.*` and `meta.*`.

Who calls what:

* the client library: `fs.submit` (mutations, inside its session) and
  `fs.read` (queries).  Use `fs.meta.client.MetaClient` rather than these
  messages directly: it builds the session envelopes, follows leader hints
  and retries within a bounded time.
* chunk servers: `meta.heartbeat` every second, `meta.bad_replica` when a
  checksum mismatch is found (clients may send it too).
* tools: `meta.servers` (the leader's view of the chunk servers).

Reply statuses follow the KV service's convention (coord.kv.service):
``OK``; ``NOT_LEADER`` with `leader` = the leader's address (go there);
``BUSY`` / ``LOST`` (retry, `leader` may hint where); ``UNAVAILABLE`` (no
leader known yet: retry after a short backoff, trying other members).
A non-OK `fs.submit` may or may not have executed; retrying the same body
(same client id and seq) is safe: the state machine executes it at most once.

Encodings carried as bytes:

* `FsSubmit.body`: `coord.kv.commands.encode_body(b)` where `b` is a
  `RegisterClient`, `KeepAlive`, `EndSession`, or
  `ClientRequest(client_id, seq, acked, ExtCommand(FS_SPACE,
  fs.meta.commands.encode_command(cmd)))`.
* `FsReply.result` for `fs.submit`: `coord.kv.results.encode_result(r)`;
  an FS command's outcome is `ExtResult(payload)` whose payload is
  `fs.meta.results.encode_result(...)`; session problems are KV
  `ErrorResult`s (SESSION_EXPIRED: not executed).
* `FsRead.query`: `fs.meta.commands.encode_query(q)`; `FsReply.result` for
  `fs.read`: `fs.meta.results.encode_result(...)` directly.

Invariants: every message is a frozen dataclass whose fields only ever
grow at the end (older peers ignore trailing fields they do not know).
"""

from __future__ import annotations

from dataclasses import dataclass

from coord.kv.service import BUSY, LOST, NOT_LEADER, OK, UNAVAILABLE
from coord.rpc import Request, Semantics, request
from fs.types import ChunkHandle, ChunkVersion, ServerId

__all__ = [
    "BUSY",
    "FS_SPACE",
    "LOST",
    "NOT_LEADER",
    "OK",
    "UNAVAILABLE",
    "BadReplica",
    "BadReplicaReply",
    "ChunkServerInfo",
    "ChunkServers",
    "ChunkServersReply",
    "FsRead",
    "FsReply",
    "FsSubmit",
    "Heartbeat",
    "HeartbeatReply",
]

#: The id of the file-system state machine among the extensions of the
#: metadata log (`coord.kv.commands.ExtCommand.space`).  Persisted: never change.
FS_SPACE = 1


# --- the client's calls -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FsReply:
    status: str  # OK or NOT_LEADER / BUSY / LOST / UNAVAILABLE
    result: bytes = b""  # see the module docstring; empty unless OK
    leader: str = ""  # the leader's "host:port" when known


@request("fs.submit", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class FsSubmit(Request[FsReply]):
    """One session body (a mutation, a registration, a keep-alive or the end of a
    session).  The leader stamps it with its clock and proposes it; for
    `AllocChunk` and `AcquireLease` it first fills in its placement choice."""

    body: bytes


@request("fs.read", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class FsRead(Request[FsReply]):
    """One query, answered by any member after a ReadIndex barrier (linearizable)."""

    query: bytes


# --- chunk servers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    status: str  # OK, NOT_LEADER (go to `leader`), UNAVAILABLE, BUSY
    leader: str = ""
    # Replicas this server must delete: no chunk map references the handle, or
    # this server is no longer among the chunk's replicas (dropped, hence stale).
    delete: tuple[ChunkHandle, ...] = ()
    # The leader wants the full list of replicas in the next heartbeat (it is
    # new, or it has never heard a full report from this server).
    send_full: bool = False


@request("meta.heartbeat", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class Heartbeat(Request[HeartbeatReply]):
    """A chunk server's periodic report to the metadata leader (send every second).

    `chunks` lists (handle, version) of replicas: all of them when `full`,
    otherwise those created or changed since the previous heartbeat (an empty
    delta is normal).  The leader answers deletions only for handles it was
    told about, so send a full report every N heartbeats and whenever
    `send_full` was set in a reply.
    """

    server: ServerId
    address: str  # "host:port" clients and peers use for chunk.* calls
    capacity: int  # bytes of the data folder's file system
    free: int  # bytes available for new chunks
    chunks: tuple[tuple[ChunkHandle, ChunkVersion], ...] = ()
    full: bool = False


@dataclass(frozen=True, slots=True)
class BadReplicaReply:
    status: str  # OK: the replica is no longer in the chunk map (or never was)
    leader: str = ""
    errno: int = 0  # nonzero when OK was impossible for good (e.g. EIO: last replica)


@request("meta.bad_replica", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class BadReplica(Request[BadReplicaReply]):
    """The replica of `handle` on `server` is corrupt (checksum mismatch): the
    leader removes it from the chunk map and bumps the chunk version in one
    entry.  Idempotent.  The last replica of a chunk is never dropped (errno
    EIO in the reply)."""

    handle: ChunkHandle
    server: ServerId
    reason: str = ""


# --- tools --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkServerInfo:
    server: ServerId
    address: str
    capacity: int
    free: int
    alive: bool  # in the leader's memory: heard from within the dead timeout
    silent_for: float  # seconds since the last heartbeat (-1: never heard by this leader)


@dataclass(frozen=True, slots=True)
class ChunkServersReply:
    status: str
    leader: str = ""
    servers: tuple[ChunkServerInfo, ...] = ()
    under_replicated: int = 0  # chunks with fewer live replicas than REPLICAS


@request("meta.servers", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkServers(Request[ChunkServersReply]):
    """The leader's view of the chunk servers (for `ddfs status`)."""
