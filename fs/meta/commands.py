"""FS commands (mutations, through the Raft log) and queries (reads), with their wire form.

A command travels inside the KV session envelope as
`ExtCommand(FS_SPACE, encode_command(cmd))` and is executed at most once per
(client id, seq); `ServerState` and a leader's `DropReplica` travel as a
`LeaderCommand` instead (idempotent, no session).  A query travels in
`fs.read` as `encode_query(q)`.

Invariants: constructors check only structure (non-negative numbers,
bounded limits); everything a POSIX call may legitimately get wrong (a name
with "/", a missing inode, a permission) is the state machine's business
and comes back as an `FsErr` result with an errno, identically on every
replica.  Tags are persisted: add new ones, never renumber.
"""

from __future__ import annotations

from dataclasses import dataclass

from fs.meta.codec import (
    BOOL,
    CRED,
    SETATTR,
    U_TUPLE,
    B,
    Registry,
    S,
    U,
)
from fs.types import ChunkHandle, Cred, InodeId, ServerId, SetAttrFields

#: The most entries one readdir returns (bounds the reply and the read transaction).
MAX_READDIR = 4096
#: The most chunk locations one query returns.
MAX_LOCATIONS = 1024


def _nonneg(*values: int) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"expected an int >= 0, got {v!r}")


# --- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mknod:
    """Create a regular file, FIFO, socket or device (type from `mode`; 0 = regular)."""

    parent: InodeId
    name: bytes
    mode: int
    rdev: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent, self.mode, self.rdev)


@dataclass(frozen=True, slots=True)
class Mkdir:
    parent: InodeId
    name: bytes
    mode: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent, self.mode)


@dataclass(frozen=True, slots=True)
class Symlink:
    parent: InodeId
    name: bytes
    target: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent)


@dataclass(frozen=True, slots=True)
class Link:
    inode: InodeId
    new_parent: InodeId
    new_name: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.new_parent)


@dataclass(frozen=True, slots=True)
class Unlink:
    parent: InodeId
    name: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent)


@dataclass(frozen=True, slots=True)
class Rmdir:
    parent: InodeId
    name: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent)


@dataclass(frozen=True, slots=True)
class Rename:
    """renameat2: `flags` is 0, RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2)."""

    parent: InodeId
    name: bytes
    new_parent: InodeId
    new_name: bytes
    flags: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent, self.new_parent, self.flags)


@dataclass(frozen=True, slots=True)
class SetAttr:
    """chmod/chown/truncate/utimens.  With `times_now`, the atime/mtime fields that
    are not None mean "now": the state machine uses the entry's log time and the
    rule for UTIME_NOW (write permission suffices) instead of the owner rule."""

    inode: InodeId
    fields: SetAttrFields
    cred: Cred
    times_now: bool = False

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class SetXattr:
    """`flags`: 0, XATTR_CREATE (1: EEXIST if present) or XATTR_REPLACE (2: ENODATA if absent)."""

    inode: InodeId
    name: bytes
    value: bytes
    flags: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.flags)


@dataclass(frozen=True, slots=True)
class RemoveXattr:
    inode: InodeId
    name: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class Create:
    """Create (or, without O_EXCL, open an existing) regular file and register one
    open of it for the session."""

    parent: InodeId
    name: bytes
    mode: int
    flags: int  # open(2) flags
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent, self.mode, self.flags)


@dataclass(frozen=True, slots=True)
class Open:
    """Check access for `flags` and register one open of `inode` for the session
    (an unlinked file stays until its last open is released)."""

    inode: InodeId
    flags: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.flags)


@dataclass(frozen=True, slots=True)
class Release:
    """Drop one open of `inode` registered by the session (the last one of an
    unlinked file deletes it and its chunks)."""

    inode: InodeId

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class AllocChunk:
    """Make sure chunk `index` of `inode` exists (the session must have it open).
    `placement` is the leader's choice of servers (it overwrites what a client sends)."""

    inode: InodeId
    index: int
    placement: tuple[ServerId, ...] = ()

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.index, *self.placement)


@dataclass(frozen=True, slots=True)
class AcquireLease:
    """The primary lease of chunk `index` (granted or renewed).  `live` is the
    leader's list of live servers, best first (it overwrites the client's; the
    state machine takes it literally: a replica not in it is not live)."""

    inode: InodeId
    index: int
    live: tuple[ServerId, ...] = ()

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.index, *self.live)


@dataclass(frozen=True, slots=True)
class DropReplica:
    """Remove `server` from the replicas of `handle` and bump the version (one entry)."""

    handle: ChunkHandle
    server: ServerId

    def __post_init__(self) -> None:
        _nonneg(self.handle, self.server)


@dataclass(frozen=True, slots=True)
class SetSize:
    """After writes (`truncate` False): size = max(size, `size`), mtime = now, and
    suid/sgid cleared for a non-root writer.  With `truncate`: ftruncate on an
    open file (chunks wholly past the end are released).  The session must have
    the file open."""

    inode: InodeId
    size: int
    truncate: bool
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.size)


@dataclass(frozen=True, slots=True)
class ServerState:
    """The leader's record of a chunk server (a LeaderCommand): address, space, liveness."""

    server: ServerId
    address: str
    capacity: int
    free: int
    alive: bool

    def __post_init__(self) -> None:
        _nonneg(self.server, self.capacity, self.free)
        if not isinstance(self.address, str):
            raise ValueError("address must be a string")


FsCommand = (
    Mknod | Mkdir | Symlink | Link | Unlink | Rmdir | Rename | SetAttr | SetXattr
    | RemoveXattr | Create | Open | Release | AllocChunk | AcquireLease | DropReplica
    | SetSize | ServerState
)

# --- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup:
    parent: InodeId
    name: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.parent)


@dataclass(frozen=True, slots=True)
class GetAttr:
    inode: InodeId

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class ReadLink:
    inode: InodeId

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class ReadDir:
    """Entries with a cookie greater than `cookie` (0: from the start), at most `limit`."""

    inode: InodeId
    cookie: int
    limit: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.cookie)
        if not 1 <= self.limit <= MAX_READDIR:
            raise ValueError(f"readdir limit must be 1..{MAX_READDIR}")


@dataclass(frozen=True, slots=True)
class Access:
    """access(2): `mask` of R_OK|W_OK|X_OK (0 = F_OK)."""

    inode: InodeId
    mask: int
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.mask)


@dataclass(frozen=True, slots=True)
class StatFsQuery:
    pass


@dataclass(frozen=True, slots=True)
class GetXattr:
    inode: InodeId
    name: bytes
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class ListXattr:
    inode: InodeId
    cred: Cred

    def __post_init__(self) -> None:
        _nonneg(self.inode)


@dataclass(frozen=True, slots=True)
class ChunkLocations:
    """Chunks `first` .. `first + count - 1` of a file that exist (holes are absent)."""

    inode: InodeId
    first: int
    count: int

    def __post_init__(self) -> None:
        _nonneg(self.inode, self.first)
        if not 1 <= self.count <= MAX_LOCATIONS:
            raise ValueError(f"count must be 1..{MAX_LOCATIONS}")


@dataclass(frozen=True, slots=True)
class Garbage:
    """Which of `handles`, reported by `server`, it must delete (the leader's heartbeat)."""

    server: ServerId
    handles: tuple[ChunkHandle, ...]

    def __post_init__(self) -> None:
        _nonneg(self.server, *self.handles)


@dataclass(frozen=True, slots=True)
class ListServers:
    """Every chunk server recorded in the state."""


@dataclass(frozen=True, slots=True)
class UnderReplicated:
    """How many chunks have fewer than `want` replicas among `live` (scans at most `limit`)."""

    live: tuple[ServerId, ...]
    want: int
    limit: int = 1_000_000

    def __post_init__(self) -> None:
        _nonneg(self.want, self.limit, *self.live)


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Everything the map holds about `handle` (a LeaseResult: location, the last
    lease's primary - 0 if none was ever granted - token and end)."""

    handle: ChunkHandle

    def __post_init__(self) -> None:
        _nonneg(self.handle)


FsQuery = (
    Lookup | GetAttr | ReadLink | ReadDir | Access | StatFsQuery | GetXattr | ListXattr
    | ChunkLocations | Garbage | ListServers | UnderReplicated | ChunkInfo
)

# --- wire form ----------------------------------------------------------------------------------

_COMMANDS: Registry[FsCommand] = Registry("FS command")
_c = _COMMANDS.add
_c(1, Mknod, ("parent", U), ("name", B), ("mode", U), ("rdev", U), ("cred", CRED))
_c(2, Mkdir, ("parent", U), ("name", B), ("mode", U), ("cred", CRED))
_c(3, Symlink, ("parent", U), ("name", B), ("target", B), ("cred", CRED))
_c(4, Link, ("inode", U), ("new_parent", U), ("new_name", B), ("cred", CRED))
_c(5, Unlink, ("parent", U), ("name", B), ("cred", CRED))
_c(6, Rmdir, ("parent", U), ("name", B), ("cred", CRED))
_c(7, Rename, ("parent", U), ("name", B), ("new_parent", U), ("new_name", B),
   ("flags", U), ("cred", CRED))
_c(8, SetAttr, ("inode", U), ("fields", SETATTR), ("cred", CRED), ("times_now", BOOL))
_c(9, SetXattr, ("inode", U), ("name", B), ("value", B), ("flags", U), ("cred", CRED))
_c(10, RemoveXattr, ("inode", U), ("name", B), ("cred", CRED))
_c(11, Create, ("parent", U), ("name", B), ("mode", U), ("flags", U), ("cred", CRED))
_c(12, Open, ("inode", U), ("flags", U), ("cred", CRED))
_c(13, Release, ("inode", U))
_c(14, AllocChunk, ("inode", U), ("index", U), ("placement", U_TUPLE))
_c(15, AcquireLease, ("inode", U), ("index", U), ("live", U_TUPLE))
_c(16, DropReplica, ("handle", U), ("server", U))
_c(17, SetSize, ("inode", U), ("size", U), ("truncate", BOOL), ("cred", CRED))
_c(18, ServerState, ("server", U), ("address", S), ("capacity", U), ("free", U),
   ("alive", BOOL))

_QUERIES: Registry[FsQuery] = Registry("FS query")
_q = _QUERIES.add
_q(64, Lookup, ("parent", U), ("name", B), ("cred", CRED))
_q(65, GetAttr, ("inode", U))
_q(66, ReadLink, ("inode", U))
_q(67, ReadDir, ("inode", U), ("cookie", U), ("limit", U), ("cred", CRED))
_q(68, Access, ("inode", U), ("mask", U), ("cred", CRED))
_q(69, StatFsQuery)
_q(70, GetXattr, ("inode", U), ("name", B), ("cred", CRED))
_q(71, ListXattr, ("inode", U), ("cred", CRED))
_q(72, ChunkLocations, ("inode", U), ("first", U), ("count", U))
_q(73, Garbage, ("server", U), ("handles", U_TUPLE))
_q(74, ListServers)
_q(75, UnderReplicated, ("live", U_TUPLE), ("want", U), ("limit", U))
_q(76, ChunkInfo, ("handle", U))

#: Commands only the leader may propose (as LeaderCommand); services refuse them from clients.
LEADER_ONLY = (ServerState,)


def encode_command(command: FsCommand) -> bytes:
    return _COMMANDS.encode(command)


def decode_command(raw: bytes) -> FsCommand:
    return _COMMANDS.decode(raw)


def encode_query(query: FsQuery) -> bytes:
    return _QUERIES.encode(query)


def decode_query(raw: bytes) -> FsQuery:
    return _QUERIES.decode(raw)


def command_classes() -> tuple[type, ...]:
    return _COMMANDS.classes()


def query_classes() -> tuple[type, ...]:
    return _QUERIES.classes()

