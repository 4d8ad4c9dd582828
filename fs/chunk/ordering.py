"""Admission of chunk mutations and reads: fencing, versions, serial order.  Sans-IO.

`ChunkGate` decides, from a replica's current state and a request, whether
the request may run now.  It does no I/O and keeps only the fencing guard;
the caller (the service) holds the chunk's lock from the decision until the
mutation is persisted, so the state it passed in is still current.

Invariants:

* Versions: a mutation whose version is below the replica's is refused
  (STALE_VERSION); a higher one is admitted and the replica adopts it.  A
  read is admitted only at exactly the replica's version.
* Fencing: per chunk the admitted tokens never decrease (`FencingGuard`);
  a token below the highest admitted is refused (STALE_TOKEN).  The guard
  is only raised when a request is admitted, never by a refused one.
* Serial order: mutations of one chunk under one token are numbered
  1, 2, 3, ... by the primary; `ReplicaState.serial` is the last one
  *decided* (committed or aborted) under `ReplicaState.token`.  Prepares
  may arrive in any order, but a replica takes the decision on number n
  only right after n - 1 (earlier: `Wait`; already decided: `Duplicate`,
  acknowledged without deciding again).  A new, higher token starts again
  at 1.
* Two-phase commit (fs/chunk/twopc.py): a replica refuses to prepare a
  mutation of a newer token while it holds an undecided one of an older
  token (IN_DOUBT): the new primary must settle the old ones first.  A
  decision is admitted whatever the version (the prepare checked it) but
  never with a stale `fence`.
* Roles: under one token a server is either the chunk's primary (it
  numbers mutations) or a secondary (it applies another's numbers), never
  both: two numberings under one token would make secondaries skip
  mutations as duplicates.  The gate remembers the role it admitted per
  chunk for the newest token and refuses the other (NOT_PRIMARY).  (In
  memory: a restart forgets it, which only loses this sanity check.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coord.lease import FenceRejected, FencingGuard, FencingToken, ResourceId
from fs.chunk import protocol as p
from fs.types import ChunkHandle, ChunkVersion


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the index holds about one replica (besides its checksums)."""

    handle: ChunkHandle
    version: ChunkVersion
    length: int  # data length in bytes (reads past it are short)
    token: FencingToken  # the token that `serial` counts under
    serial: int  # the last serial applied under `token` (0: none yet)


@dataclass(frozen=True, slots=True)
class Admit:
    serial: int  # the serial the mutation carries (assigned or given)
    version: ChunkVersion  # the replica's version once it is applied
    token: FencingToken
    raised: bool  # the chunk's highest token moved up: persist it with the mutation


@dataclass(frozen=True, slots=True)
class Reject:
    code: str  # a fs.chunk.protocol error code
    message: str


@dataclass(frozen=True, slots=True)
class Wait:
    expected: int  # the serial this replica needs first


@dataclass(frozen=True, slots=True)
class Duplicate:
    serial: int  # already applied: acknowledge, do nothing


def resource(handle: ChunkHandle) -> ResourceId:
    return ResourceId(f"chunk/{handle}")


def stale_version(state: ReplicaState, asked: int) -> Reject:
    return Reject(p.STALE_VERSION,
                  f"chunk {state.handle}: replica at version {state.version}, asked {asked}")


class ChunkGate:
    """The per-server admission core; one instance guards every chunk."""

    __slots__ = ("_guard", "_roles")

    def __init__(self, fences: Mapping[ChunkHandle, FencingToken] | None = None) -> None:
        # Highest token admitted per chunk (replicas deleted since included).
        self._guard = FencingGuard({resource(h): t for h, t in (fences or {}).items()})
        # Per chunk: (token, True if we are its primary under that token).
        self._roles: dict[ChunkHandle, tuple[FencingToken, bool]] = {}

    def _role_conflict(self, handle: ChunkHandle, token: FencingToken,
                       primary: bool) -> Reject | None:
        known = self._roles.get(handle)
        if known is not None and known[0] == token and known[1] != primary:
            role = "a secondary" if primary else "the primary"
            return Reject(p.NOT_PRIMARY, f"chunk {handle}: this server is {role} "
                                         f"under token {token}")
        return None

    def forget(self, handle: ChunkHandle) -> None:
        """The replica was deleted: forget its role (its fence stays)."""
        self._roles.pop(handle, None)

    def highest(self, handle: ChunkHandle) -> FencingToken:
        return self._guard.highest(resource(handle))

    def _version_and_fence(
        self, state: ReplicaState | None, handle: ChunkHandle, version: ChunkVersion,
        token: FencingToken,
    ) -> Reject | None:
        if state is not None and version < state.version:
            return stale_version(state, version)
        highest = self.highest(handle)
        if token <= 0 or token < highest:
            return Reject(p.STALE_TOKEN,
                          f"chunk {handle}: stale fencing token {token} < {highest}")
        return None

    def _admit(self, handle: ChunkHandle, state: ReplicaState | None, version: ChunkVersion,
               token: FencingToken, serial: int, primary: bool | None = None) -> Admit:
        if primary is not None:
            self._roles[handle] = (token, primary)
        verdict = self._guard.check(resource(handle), token)
        assert not isinstance(verdict, FenceRejected), verdict  # checked just before
        adopted = ChunkVersion(max(version, state.version if state else version))
        return Admit(serial, adopted, token, verdict.raised)

    @staticmethod
    def next_serial(state: ReplicaState | None, token: FencingToken) -> int:
        """The serial the next mutation under `token` must carry here."""
        return state.serial + 1 if state is not None and state.token == token else 1

    def primary(self, state: ReplicaState | None, handle: ChunkHandle, version: ChunkVersion,
                token: FencingToken, serial: int | None = None) -> Admit | Reject:
        """A client's mutation at the primary: admit with `serial` (default: the
        next after the last decided one), or refuse."""
        refused = (self._version_and_fence(state, handle, version, token)
                   or self._role_conflict(handle, token, primary=True))
        if refused is not None:
            return refused
        if serial is None:
            serial = self.next_serial(state, token)
        return self._admit(handle, state, version, token, serial, primary=True)

    def prepare(
        self, state: ReplicaState | None, handle: ChunkHandle, version: ChunkVersion,
        token: FencingToken, serial: int, *, older_undecided: bool, primary: bool,
    ) -> Admit | Reject:
        """Phase 1 at a replica (the primary's own copy included): may mutation
        (token, serial) be prepared here?"""
        if serial < 1:
            return Reject(p.BAD_ARGS, f"serial {serial} < 1")
        refused = (self._version_and_fence(state, handle, version, token)
                   or self._role_conflict(handle, token, primary=primary))
        if refused is not None:
            return refused
        if older_undecided:
            return Reject(p.IN_DOUBT, f"chunk {handle}: a mutation of an older lease is "
                                      "undecided here; the new primary must settle it first")
        if serial < self.next_serial(state, token):
            return Reject(p.OUT_OF_ORDER, f"chunk {handle}: serial {serial} of token {token} "
                                          "was decided already")
        return self._admit(handle, state, version, token, serial, primary=primary)

    def decide(
        self, state: ReplicaState | None, handle: ChunkHandle, fence: FencingToken,
        token: FencingToken, serial: int, *, older_undecided: bool = False,
    ) -> Admit | Reject | Wait | Duplicate:
        """Phase 2 at a replica: may the decision on (token, serial), sent by the
        holder of `fence`, be taken now?  In serial order per token, and never
        past an undecided mutation of an older token (it would be stranded)."""
        if serial < 1 or token > fence:
            return Reject(p.BAD_ARGS, f"decision on serial {serial} of token {token} "
                                      f"under fence {fence}")
        highest = self.highest(handle)
        if fence <= 0 or fence < highest:
            return Reject(p.STALE_TOKEN, f"chunk {handle}: stale fencing token {fence} "
                                         f"< {highest}")
        if state is not None and state.token > token:
            return Reject(p.OUT_OF_ORDER, f"chunk {handle}: already deciding under token "
                                          f"{state.token} > {token}")
        if older_undecided:
            return Reject(p.IN_DOUBT, f"chunk {handle}: a mutation of a token older than "
                                      f"{token} is undecided here")
        expected = self.next_serial(state, token)
        if serial < expected:
            return Duplicate(serial)
        if serial > expected:
            return Wait(expected)
        version = state.version if state is not None else ChunkVersion(0)
        return self._admit(handle, state, version, fence, serial)

    def fence(self, handle: ChunkHandle, token: FencingToken) -> Admit | Reject:
        """Accept `token` as the chunk's highest (a new primary's inquiry)."""
        highest = self.highest(handle)
        if token <= 0 or token < highest:
            return Reject(p.STALE_TOKEN, f"chunk {handle}: stale fencing token {token} "
                                         f"< {highest}")
        verdict = self._guard.check(resource(handle), token)
        assert not isinstance(verdict, FenceRejected), verdict
        return Admit(0, ChunkVersion(0), token, verdict.raised)

    def secondary(
        self, state: ReplicaState | None, handle: ChunkHandle, version: ChunkVersion,
        token: FencingToken, serial: int,
    ) -> Admit | Reject | Wait | Duplicate:
        """A primary's mutation number `serial` at a secondary."""
        if serial < 1:
            return Reject(p.BAD_ARGS, f"serial {serial} < 1")
        refused = (self._version_and_fence(state, handle, version, token)
                   or self._role_conflict(handle, token, primary=False))
        if refused is not None:
            return refused
        expected = self.next_serial(state, token)
        if serial < expected:
            return Duplicate(serial)
        if serial > expected:
            return Wait(expected)
        return self._admit(handle, state, version, token, serial, primary=False)

    def set_version(self, state: ReplicaState | None, handle: ChunkHandle,
                    version: ChunkVersion, token: FencingToken) -> Admit | Reject:
        """Raise the version without data; the serial count is left alone."""
        refused = self._version_and_fence(state, handle, version, token)
        if refused is not None:
            return refused
        serial = state.serial if state is not None else 0
        return self._admit(handle, state, version, token, serial)

    @staticmethod
    def read(state: ReplicaState | None, handle: ChunkHandle,
             version: ChunkVersion) -> Reject | None:
        if state is None:
            return Reject(p.NO_CHUNK, f"no replica of chunk {handle} here")
        if version != state.version:
            return stale_version(state, version)
        return None
