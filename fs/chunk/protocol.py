"""The chunk server's RPC methods (`chunk.*`): messages, replies and error codes.

This is the contract the client library (fs/client) and the metadata leader
code against; docs/chunk-server.md describes the protocol around it and
docs/fs-design.md the contracts between the parts.

Invariants of the protocol:

* A write is three steps.  The data travels first (`ChunkPush`, along a
  chain of replicas, into each server's bounded staging buffer).  Then the
  primary (the lease holder) runs a two-phase commit over the replica set
  (`ChunkWrite`): it gives the mutation the chunk's next serial number and
  every replica, itself included, *prepares* it (`ChunkPrepare`: the data
  and an intent record made durable, nothing readable yet) and votes.  The
  primary decides COMMIT only if every replica of the write prepared it,
  and the decision (`ChunkDecide`) is applied by every replica in serial
  order.  Serial numbers restart at 1 with every new fencing token.
* Staged data (pushed, in memory) is keyed by (origin, data_id): `origin`
  is the RPC node id of the client that pushed it first (servers
  forwarding a push say whose data it is), `data_id` a number the client
  chooses, unique among its pushes still in flight.  A prepare consumes the
  staged data it names, whether it succeeds or fails; staged data nobody
  consumes expires.
* Prepared data is never readable: a read returns committed mutations
  only, and a read overlapping a prepared, undecided mutation waits for its
  decision (bounded; then IN_DOUBT, read elsewhere).
* Every mutation carries the chunk version and the primary's fencing token.
  A replica rejects a token lower than the highest it has accepted for the
  chunk (STALE_TOKEN; the highest token survives restarts and deletion) and
  a version lower than its own (STALE_VERSION); a higher version is adopted
  when the mutation commits (that is how a new lease's version bump reaches
  the replicas).
* A new primary (a new token) resolves every prepared, undecided mutation
  of the replica set before it serves a write (`ChunkIntents` fences and
  lists them, `ChunkDecide` settles them the same way everywhere);
  `ChunkBegin` does that, then raises the replicas' versions, right after
  a lease grant.
* A read names the version the client expects; a replica at any other
  version refuses it (STALE_VERSION).  Every block a read touches is
  verified against its CRC-32C; a mismatch is reported to the metadata
  leader (`meta.bad_replica`) and the read fails with CHECKSUM so the
  client reads another replica.
* Offsets and lengths are bytes within the chunk: 0 <= offset,
  offset + length <= CHUNK_SIZE.  A replica's data length is the end of
  the furthest byte ever written (or the truncate length); bytes never
  written inside it read as zeros, and a read past it is short.

Errors are `coord.rpc.RemoteError(code, message)` with one of the codes
below; the client decides per code (see `RETRY_ELSEWHERE`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coord.lease.types import FencingToken
from coord.rpc import Request, Semantics, request
from fs.types import ChunkHandle, ChunkVersion, ServerId

# ---- error codes (RemoteError.code) ---------------------------------------

CHECKSUM = "CHECKSUM"  # a block failed CRC-32C verification; message names "block N"
STALE_TOKEN = "STALE_TOKEN"  # the fencing token is lower than one already accepted
STALE_VERSION = "STALE_VERSION"  # version mismatch; message names "replica at version N"
NO_CHUNK = "NO_CHUNK"  # this server holds no replica of the chunk
NO_DATA = "NO_DATA"  # no (complete) staged data under (origin, data_id): push it again
OUT_OF_ORDER = "OUT_OF_ORDER"  # a secondary waited too long for an earlier serial
ENOSPC = "ENOSPC"  # the data disk is full; nothing was changed, staged data dropped
EIO = "EIO"  # a local I/O error other than a full disk
BAD_ARGS = "BAD_ARGS"  # offset/length/handle out of range, data too large, ...
NOT_PRIMARY = "NOT_PRIMARY"  # a write to a secondary of this lease (or a prepare to its primary)
IN_DOUBT = "IN_DOUBT"  # an undecided prepared mutation is in the way (read: elsewhere / later)
# A full staging buffer answers with the RPC framework's OVERLOADED code,
# which the RPC client treats as transient and retries with backoff.
STAGING_FULL = "OVERLOADED"

# Codes after which the same bytes are worth asking of another replica.
RETRY_ELSEWHERE = frozenset({CHECKSUM, STALE_VERSION, NO_CHUNK, EIO, IN_DOUBT})

_BLOCK_RE = re.compile(r"\bblock (\d+)\b")
_VERSION_RE = re.compile(r"\breplica at version (\d+)\b")


def bad_block_of(message: str) -> int | None:
    """The block index a CHECKSUM error message names (None if it names none)."""
    m = _BLOCK_RE.search(message)
    return int(m.group(1)) if m else None


def replica_version_of(message: str) -> int | None:
    """The replica's version a STALE_VERSION message names (None if absent)."""
    m = _VERSION_RE.search(message)
    return int(m.group(1)) if m else None


# ---- data push ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushReply:
    stored: list[str]  # the addresses of `chain` that confirmed they hold the data


@request("chunk.push", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkPush(Request[PushReply]):
    """Stage `data` at byte `part_offset` of the buffer (origin, data_id), then
    forward it to `chain[0]` with `chain[1:]` and answer once that returned.

    `chain` lists the servers that must receive the data AFTER the receiver
    (the client calls chain[0] with chain[1:]).  If a server of the chain
    cannot be reached it is skipped and the push continues with the rest;
    `PushReply.stored` says which of them hold the data.  Idempotent: a
    repeated part overwrites itself.  A large write may be pushed as several
    parts (different `part_offset`, same `data_id`), concurrently: the parts
    must tile [0, total) without gaps or overlaps by the time of the write.
    `origin` is 0 from a client (the server uses the caller's node id) and
    the client's node id on forwards between servers.
    """

    data_id: int
    data: bytes
    chain: list[str]
    part_offset: int = 0
    origin: int = 0


# ---- mutations (to the primary) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteReply:
    serial: int  # the serial the primary gave this mutation
    failed: list[str]  # replicas to report (fs.drop_replica) before the write counts as done
    committed: bool = True  # False: aborted everywhere; drop `failed`, then write again


@request("chunk.write", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkWrite(Request[WriteReply]):
    """To the primary: write the staged data (caller, data_id) at `offset`,
    atomically on every replica (two-phase commit).

    The primary checks the fencing token and the version, resolves what a
    previous primary left undecided (first write under a new token), gives
    the mutation the chunk's next serial, has itself and every address in
    `secondaries` prepare it, and decides:

    * every replica prepared: COMMIT, applied everywhere in serial order;
      `failed` lists those that did not confirm the commit (report them);
    * otherwise ABORT everywhere, nothing changes anywhere: `committed` is
      False and `failed` lists the replicas that could not prepare (report
      them, then write again without them).

    An error reply means nothing was committed: STALE_TOKEN / STALE_VERSION
    (a newer lease exists), ENOSPC (some replica's disk is full), IN_DOUBT
    (an old undecided mutation; retry), NO_DATA (push again).  `sync` is
    kept for compatibility: a prepared mutation is always durable (its data
    is fsynced before the vote), so an acknowledged write survives crashes.
    """

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken
    data_id: int
    offset: int
    secondaries: list[str]
    sync: bool = True


# A record append's data is at most a quarter chunk, so padding wastes at most
# a quarter of a chunk (GFS keeps records small for the same reason).
MAX_RECORD = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AppendReply:
    offset: int  # where in the chunk the record went (with `full`: the chunk's end so far)
    full: bool  # the record did not fit: nothing written, the chunk is closed to appends
    serial: int
    failed: list[str]  # replicas to report, as WriteReply.failed
    committed: bool = True  # False: aborted everywhere; drop `failed`, then append again


@request("chunk.append", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkAppend(Request[AppendReply]):
    """To the primary: GFS record append.  The primary, not the client, picks
    the offset: the end of the chunk's data as this lease has extended it
    (committed data, plus every append of the same lease still in flight),
    so concurrent appenders never overlap; then the record is written like
    `ChunkWrite` (two-phase commit) at that offset.  If the record does not
    fit in what is left of the chunk, nothing is written, the chunk is
    closed to appends for the rest of the lease, and `full` tells the client
    to pad the file to the chunk's end and append to the next chunk.

    At least once, not exactly once: an append whose reply is lost is
    appended again by the retrying client, and an aborted append leaves a
    run of zeros.  Readers must frame their records (docs/chunk-server.md).
    Data longer than MAX_RECORD is refused (BAD_ARGS).
    """

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken
    data_id: int
    secondaries: list[str]


@dataclass(frozen=True, slots=True)
class TruncateReply:
    serial: int
    failed: list[str]  # replicas to report, as WriteReply.failed
    committed: bool = True


@request("chunk.truncate", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkTruncate(Request[TruncateReply]):
    """To the primary: cut the replica's data to `length` bytes (bytes beyond
    read as zeros if the chunk grows again), ordered with the writes and
    committed like one.  A length at or past the current data length changes
    no data (the version/token checks and adoption still run)."""

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken
    length: int
    secondaries: list[str]


@dataclass(frozen=True, slots=True)
class BeginReply:
    version: ChunkVersion  # the primary's version afterwards
    failed: list[str]  # replicas that could not be resolved or raised: report them
    resolved: int  # undecided mutations of earlier leases settled now


@request("chunk.begin", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkBegin(Request[BeginReply]):
    """To the primary, right after a lease grant: settle every prepared,
    undecided mutation of the replica set (commit it everywhere if some
    replica committed it, else abort it everywhere), then raise every
    replica to `version` (closing the version-bump gap).  Idempotent; a
    write does the settling itself if this call was lost."""

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken
    secondaries: list[str]


# ---- two-phase commit between the primary and the replicas ---------------------


@dataclass(frozen=True, slots=True)
class PrepareReply:
    serial: int


@request("chunk.prepare", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkPrepare(Request[PrepareReply]):
    """Primary to secondary: prepare mutation (token, serial) - take the
    staged data (origin, data_id), make it and an intent record durable,
    reserve the disk blocks the commit will need - and vote (an answer is
    READY, an error is a no vote).  Nothing becomes readable.  With
    `truncate` the mutation is a truncate to length `offset` (no data).
    Idempotent: an intent already prepared is acknowledged again."""

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken
    serial: int
    data_id: int
    offset: int
    origin: int
    truncate: bool = False


@dataclass(frozen=True, slots=True)
class DecideReply:
    version: ChunkVersion  # the replica's version afterwards


@request("chunk.decide", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkDecide(Request[DecideReply]):
    """The outcome of mutation (token, serial): applied (`commit`) or
    dropped, strictly in serial order per (chunk, token) - an early one
    waits for its predecessors (bounded, then OUT_OF_ORDER).  `fence` is
    the sender's token (the primary's own, or a newer primary settling an
    old mutation): it must not be stale.  `version` is the sender's lease
    version (adopted on commit, never lowering the replica's).
    Idempotent: a repeated decision is acknowledged; a contradicting one is
    refused (EIO)."""

    handle: ChunkHandle
    token: FencingToken
    serial: int
    commit: bool
    fence: FencingToken
    version: ChunkVersion


@dataclass(frozen=True, slots=True)
class IntentsReply:
    present: bool  # this server holds a replica (or an intent to create one)
    version: ChunkVersion
    token: FencingToken  # the token `serial` counts under
    serial: int  # the last serial decided under `token`
    aborted: list[int]  # the serials aborted under `token` (the rest up to `serial` committed)
    prepared: list[tuple[int, int]]  # undecided mutations, as (token, serial), ascending


@request("chunk.intents", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkIntents(Request[IntentsReply]):
    """A new primary asks what this replica decided and what it holds
    undecided.  With `fence` > 0 the replica first accepts `fence` as the
    chunk's highest token (durably, before answering), so no older
    primary can prepare or decide anything afterwards: the answer stays
    true for every mutation of older tokens."""

    handle: ChunkHandle
    fence: int = 0  # a FencingToken; 0: only ask


@dataclass(frozen=True, slots=True)
class SetVersionReply:
    version: ChunkVersion  # the replica's version afterwards


@request("chunk.set_version", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkSetVersion(Request[SetVersionReply]):
    """Raise the replica's version to `version` without changing data (fenced
    like a write; a lower version is refused STALE_VERSION, an equal one is a
    no-op).  For the lease grantee or metadata leader after a version bump, so
    that replicas become readable at the new version before any write."""

    handle: ChunkHandle
    version: ChunkVersion
    token: FencingToken


# ---- reads and administration ----------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadReply:
    data: bytes  # shorter than asked at the end of the replica's data


@request("chunk.read", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkRead(Request[ReadReply]):
    """Read `length` bytes at `offset`, verifying every block touched.
    STALE_VERSION unless the replica is at exactly `version`."""

    handle: ChunkHandle
    version: ChunkVersion
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DeleteReply:
    deleted: list[ChunkHandle]  # the handles that had a replica here (now gone)


@request("chunk.delete", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkDelete(Request[DeleteReply]):
    """Delete these replicas (waits for mutations in progress on them).  The
    highest fencing token of each is kept, so a deposed primary cannot
    recreate one."""

    handles: list[ChunkHandle]


@dataclass(frozen=True, slots=True)
class StatReply:
    server_id: ServerId
    capacity: int  # bytes of the data file system
    free: int  # bytes available to us on it
    used: int  # bytes of chunk data (sum of replica lengths)
    chunks: int  # replicas stored
    staged_bytes: int  # bytes in the staging buffer
    staged_entries: int


@request("chunk.stat", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkStat(Request[StatReply]):
    """Space and counts, for `ddfs status`."""


@dataclass(frozen=True, slots=True)
class ChecksumReply:
    version: ChunkVersion
    length: int
    bad_blocks: list[int]  # empty: every block verified


@request("chunk.checksum", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class ChunkChecksum(Request[ChecksumReply]):
    """Verify every block of the replica (for `ddfs fsck`); bad blocks are
    also reported to the metadata leader."""

    handle: ChunkHandle
