"""Results of FS commands and queries, with their wire form.

A command's result is cached in the session's reply table (encoded) and a
duplicate gets the decoded copy, so `decode_result(encode_result(r)) == r`
for every result.  Errors are values: `FsErr(errno, message)`, the same on
every replica; the client library raises `fs.types.FsError` from it.

Tags are persisted (reply cache): add new ones, never renumber.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from coord.kv.codec import as_list
from fs.meta.codec import (
    ATTR,
    B_TUPLE,
    BOOL,
    ENTRY,
    LOCATION,
    STATFS,
    U_TUPLE,
    B,
    Kind,
    Registry,
    S,
    U,
    tuple_of,
)
from fs.types import (
    Attr,
    ChunkHandle,
    ChunkLocation,
    DirEntry,
    FsError,
    ServerId,
    StatFs,
)


@dataclass(frozen=True, slots=True)
class FsErr:
    errno: int
    message: str = ""

    def __post_init__(self) -> None:
        if self.errno < 1:
            raise ValueError("errno must be >= 1")

    def exception(self) -> FsError:
        return FsError(self.errno, self.message)

    def __str__(self) -> str:
        return f"{_errno.errorcode.get(self.errno, self.errno)}: {self.message}"


@dataclass(frozen=True, slots=True)
class Done:
    """Success with nothing to report."""


@dataclass(frozen=True, slots=True)
class AttrResult:
    attr: Attr


@dataclass(frozen=True, slots=True)
class DataResult:
    data: bytes  # readlink target, xattr value


@dataclass(frozen=True, slots=True)
class NamesResult:
    names: tuple[bytes, ...]  # listxattr


@dataclass(frozen=True, slots=True)
class EntriesResult:
    entries: tuple[DirEntry, ...]
    more: bool  # the limit cut the listing short: continue from the last cookie


@dataclass(frozen=True, slots=True)
class StatFsResult:
    statfs: StatFs


@dataclass(frozen=True, slots=True)
class ChunkResult:
    location: ChunkLocation


@dataclass(frozen=True, slots=True)
class LeaseResult:
    """A chunk's primary lease.  `location.version` is the version to write with;
    the secondaries are the other replicas of `location`."""

    location: ChunkLocation
    primary: ServerId
    token: int  # fencing token: the log index of the entry that granted the lease
    expires_ns: int  # in log time (ns) - for information; clients use `lease_ms`
    lease_ms: int  # how long the lease lasts from the reply, at most

    @property
    def secondaries(self) -> tuple[tuple[ServerId, str], ...]:
        return tuple(r for r in self.location.replicas if r[0] != self.primary)

    @property
    def primary_address(self) -> str:
        return next(a for s, a in self.location.replicas if s == self.primary)


@dataclass(frozen=True, slots=True)
class ChunksResult:
    locations: tuple[ChunkLocation, ...]


@dataclass(frozen=True, slots=True)
class HandlesResult:
    handles: tuple[ChunkHandle, ...]


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """A chunk server as the replicated state knows it (the leader keeps liveness)."""

    server: ServerId
    address: str
    capacity: int
    free: int
    alive: bool


@dataclass(frozen=True, slots=True)
class ServersResult:
    servers: tuple[ServerRecord, ...]


@dataclass(frozen=True, slots=True)
class CountResult:
    count: int
    complete: bool  # False: the scan limit was reached


FsResult = (
    FsErr | Done | AttrResult | DataResult | NamesResult | EntriesResult | StatFsResult
    | ChunkResult | LeaseResult | ChunksResult | HandlesResult | ServersResult | CountResult
)


def _server_dec(obj: object, what: str) -> ServerRecord:
    server, address, capacity, free, alive = as_list(obj, what, 5)
    return ServerRecord(
        ServerId(U.dec(server, "server")), S.dec(address, "address"), U.dec(capacity, "capacity"),
        U.dec(free, "free"), BOOL.dec(alive, "alive"),
    )


SERVER = Kind(lambda r: [r.server, r.address, r.capacity, r.free, r.alive], _server_dec)

_RESULTS: Registry[FsResult] = Registry("FS result")
_r = _RESULTS.add
_r(128, FsErr, ("errno", U), ("message", S))
_r(129, Done)
_r(130, AttrResult, ("attr", ATTR))
_r(131, DataResult, ("data", B))
_r(132, NamesResult, ("names", B_TUPLE))
_r(133, EntriesResult, ("entries", tuple_of(ENTRY)), ("more", BOOL))
_r(134, StatFsResult, ("statfs", STATFS))
_r(135, ChunkResult, ("location", LOCATION))
_r(136, LeaseResult, ("location", LOCATION), ("primary", U), ("token", U),
   ("expires_ns", U), ("lease_ms", U))
_r(137, ChunksResult, ("locations", tuple_of(LOCATION)))
_r(138, HandlesResult, ("handles", U_TUPLE))
_r(139, ServersResult, ("servers", tuple_of(SERVER)))
_r(140, CountResult, ("count", U), ("complete", BOOL))


def encode_result(result: FsResult) -> bytes:
    return _RESULTS.encode(result)


def decode_result(raw: bytes) -> FsResult:
    return _RESULTS.decode(raw)


def result_classes() -> tuple[type, ...]:
    return _RESULTS.classes()


def err(code: int, message: str = "") -> FsErr:
    return FsErr(code, message)
