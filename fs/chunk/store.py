"""Where replicas live: the `ChunkStore` interface, its errors, and the in-memory twin.

A store holds, per chunk handle, the replica's data, its per-block CRC-32C
checksums (fs.chunk.blocks rules), its `ReplicaState` (version, data
length, token, serial) and, per handle ever seen, the highest fencing token
admitted (kept after the replica is deleted).  `DiskChunkStore`
(fs/chunk/disk.py) keeps data in files and the rest in LMDB;
`MemoryChunkStore` here keeps everything in dicts for tests.

Contract (both implementations):

* Methods are synchronous and may block (disk I/O, fsync); the service
  calls them from worker threads.  They are safe to call concurrently for
  *different* handles; the caller serialises mutations of one handle.
* The store trusts the admission decision (fs.chunk.ordering) it is given
  and records it: `Mutation` is what to record besides the data.
* Every read verifies every block it returns bytes from; a mismatch raises
  `CorruptBlock` naming the first bad block.  A partial-block write
  verifies the old block before merging into it, so corruption is never
  laundered into a fresh checksum.
* A mutation that raises `NoSpace` changed nothing (data, checksums and
  state are as before).
* Two-phase commit (fs/chunk/intent.py has the life of an intent):
  `prepare` makes a mutation's data and intent durable and reserves the
  space its commit needs, so `commit` cannot fail for space; nothing of
  a prepared mutation is readable.  `commit`/`abort` take the decision on
  (token, serial) - the caller admitted it in serial order - and record
  it in the replica's state (`serial` = the last decided); `abort` of a
  serial never prepared here records the decision too.  ABORTED markers
  of the state's token are kept (`aborted`), older ones dropped.
* Every mutation raises the persisted fence to the token it carries.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Protocol

import native
from coord.lease import FencingToken
from fs.chunk import blocks
from fs.chunk.intent import Intent, IntentKey, IntentStatus
from fs.chunk.ordering import ReplicaState
from fs.types import BLOCK_SIZE, ChunkHandle, ChunkVersion

MAX_HANDLE = (1 << 63) - 1


class StoreError(Exception):
    """Base of the store's errors."""


class CorruptBlock(StoreError):
    def __init__(self, handle: ChunkHandle, block: int) -> None:
        super().__init__(f"chunk {handle}: checksum mismatch in block {block}")
        self.handle = handle
        self.block = block


class NoReplica(StoreError):
    def __init__(self, handle: ChunkHandle) -> None:
        super().__init__(f"no replica of chunk {handle} here")
        self.handle = handle


class NoSpace(StoreError):
    """The data file system (or the index) is full; nothing was changed."""


class StoreIOError(StoreError):
    """Another local I/O error."""


@dataclass(frozen=True, slots=True)
class Mutation:
    """The admitted request's identity, recorded with the mutation."""

    version: ChunkVersion
    token: FencingToken
    serial: int


@dataclass(frozen=True, slots=True)
class Space:
    capacity: int  # bytes of the file system holding the data
    free: int  # bytes available to this process on it
    used: int  # sum of replica data lengths


def check_handle(handle: int) -> ChunkHandle:
    """Handles are the only request input that names a file: integers in
    [0, 2**63), nothing else (no path can be smuggled in)."""
    if type(handle) is not int or not 0 <= handle <= MAX_HANDLE:
        raise ValueError(f"bad chunk handle {handle!r}")
    return ChunkHandle(handle)


class ChunkStore(Protocol):
    def states(self) -> dict[ChunkHandle, ReplicaState]: ...
    def state(self, handle: ChunkHandle) -> ReplicaState | None: ...
    def fences(self) -> dict[ChunkHandle, FencingToken]: ...
    def write(self, handle: ChunkHandle, m: Mutation, offset: int, data: bytes,
              sync: bool) -> ReplicaState: ...
    def truncate(self, handle: ChunkHandle, m: Mutation, length: int,
                 sync: bool) -> ReplicaState: ...
    def set_version(self, handle: ChunkHandle, m: Mutation) -> ReplicaState: ...
    def read(self, handle: ChunkHandle, offset: int, size: int) -> bytes: ...
    def verify(self, handle: ChunkHandle) -> list[int]: ...
    def delete(self, handle: ChunkHandle) -> bool: ...
    def space(self) -> Space: ...
    def close(self) -> None: ...
    # two-phase commit
    def intents(self, handle: ChunkHandle) -> list[Intent]: ...
    def intent_handles(self) -> list[ChunkHandle]: ...
    def aborted(self, handle: ChunkHandle) -> list[int]: ...
    def stage(self, handle: ChunkHandle, key: IntentKey, data: bytes) -> None: ...
    def unstage(self, handle: ChunkHandle, key: IntentKey) -> None: ...
    def prepare(self, handle: ChunkHandle, intent: Intent, data: bytes) -> None: ...
    def commit(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken,
               version: ChunkVersion, data: bytes | None = None) -> ReplicaState: ...
    def abort(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken,
              version: ChunkVersion) -> ReplicaState: ...
    def raise_fence(self, handle: ChunkHandle, token: FencingToken) -> None: ...
    def checkpoint(self, handle: ChunkHandle) -> int: ...


def position(state: ReplicaState | None, intents: list[Intent]) -> ReplicaState | None:
    """Where the replica stands in the serial order: its state, or - for a
    replica whose only history is aborted first mutations (nothing written,
    so no state) - a length-0 state at the newest ABORTED marker, so that
    the next serial is admitted after them."""
    if state is not None:
        return state
    markers = [i for i in intents if i.status is IntentStatus.ABORTED]
    if not markers:
        return None
    last = max(markers, key=lambda i: i.key)
    return ReplicaState(last.handle, last.version, 0, last.token, last.serial)


def aborted_serials(state: ReplicaState | None, intents: list[Intent]) -> list[int]:
    """The serials aborted under the token the replica's serial counts under."""
    pos = position(state, intents)
    return [i.serial for i in intents
            if pos is not None and i.token == pos.token and i.status is IntentStatus.ABORTED]


def older_undecided(intents: list[Intent], token: int) -> bool:
    """Does the replica hold an undecided mutation of a token older than `token`?"""
    return any(i.undecided and i.token < token for i in intents)


def decided_state(st: ReplicaState | None, handle: ChunkHandle, version: ChunkVersion,
                  key: IntentKey, length: int | None = None) -> ReplicaState:
    """The replica's state once the decision on `key` is taken."""
    token, serial = key
    if st is None:
        return ReplicaState(handle, version, length or 0, token, serial)
    return ReplicaState(handle, ChunkVersion(max(st.version, version)),
                        st.length if length is None else length, token, serial)


def bad_blocks(data: bytes | bytearray, crcs: array[int], first: int = 0) -> list[int]:
    """Every block of `data` (whole padded blocks) whose checksum differs."""
    out: list[int] = []
    start = 0
    while start < len(crcs):
        bad = native.verify_blocks(memoryview(data)[start * BLOCK_SIZE:], crcs[start:],
                                   BLOCK_SIZE)
        if bad < 0:
            break
        out.append(first + start + bad)
        start += bad + 1
    return out


class MemoryChunkStore:
    """The in-memory twin: same rules, dicts instead of files and LMDB."""

    def __init__(self, capacity: int = 1 << 40) -> None:
        self.capacity = capacity
        self._data: dict[ChunkHandle, bytearray] = {}
        self._crcs: dict[ChunkHandle, array[int]] = {}
        self._states: dict[ChunkHandle, ReplicaState] = {}
        self._fences: dict[ChunkHandle, FencingToken] = {}
        self._intents: dict[ChunkHandle, dict[IntentKey, Intent]] = {}
        self._staged: dict[tuple[ChunkHandle, IntentKey], bytes] = {}

    # -- test hooks ---------------------------------------------------------

    def corrupt(self, handle: ChunkHandle, offset: int) -> None:
        """Flip one bit of the stored data (a bad disk)."""
        self._data[handle][offset] ^= 0x01

    def _used(self) -> int:
        return (sum(s.length for s in self._states.values())
                + sum(len(d) for d in self._staged.values()))

    # -- ChunkStore -----------------------------------------------------------

    def states(self) -> dict[ChunkHandle, ReplicaState]:
        return dict(self._states)

    def state(self, handle: ChunkHandle) -> ReplicaState | None:
        return self._states.get(handle)

    def fences(self) -> dict[ChunkHandle, FencingToken]:
        return dict(self._fences)

    def _record(self, handle: ChunkHandle, m: Mutation, length: int) -> ReplicaState:
        st = ReplicaState(handle, m.version, length, m.token, m.serial)
        self._states[handle] = st
        self._fences[handle] = FencingToken(max(m.token, self._fences.get(handle, 0)))
        return st

    def _old_block(self, handle: ChunkHandle, block: int, length: int) -> bytes:
        data = self._data[handle]
        raw = bytes(data[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE])
        padded = blocks.padded_block(raw, block, length)
        if native.crc32c(padded) != self._crcs[handle][block]:
            raise CorruptBlock(handle, block)
        return padded

    def write(self, handle: ChunkHandle, m: Mutation, offset: int, data: bytes,
              sync: bool) -> ReplicaState:
        return self._write(handle, m, offset, data, check_space=True)

    def _write(self, handle: ChunkHandle, m: Mutation, offset: int, data: bytes, *,
               check_space: bool) -> ReplicaState:
        st = self._states.get(handle)
        length = st.length if st else 0
        crcs = self._crcs.get(handle, array("I"))
        old = {b: self._old_block(handle, b, length)
               for b in blocks.partial_blocks(length, offset, len(data))}
        plan = blocks.plan_write(length, crcs, offset, data, old)
        if check_space and self._used() + plan.length - length > self.capacity:
            raise NoSpace(f"chunk {handle}: no space for {len(data)} bytes")
        buf = self._data.setdefault(handle, bytearray())
        end = plan.image_offset + len(plan.image)
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[plan.image_offset:end] = plan.image
        self._crcs[handle] = plan.crcs
        return self._record(handle, m, plan.length)

    def truncate(self, handle: ChunkHandle, m: Mutation, length: int,
                 sync: bool) -> ReplicaState:
        st = self._states.get(handle)
        old_length = st.length if st else 0
        crcs = self._crcs.get(handle, array("I"))
        last = None
        if length < old_length and length % BLOCK_SIZE:
            last = self._old_block(handle, length // BLOCK_SIZE, old_length)
        plan = blocks.plan_truncate(old_length, crcs, length, last)
        buf = self._data.setdefault(handle, bytearray())
        del buf[plan.length:]
        self._crcs[handle] = plan.crcs
        return self._record(handle, m, plan.length)

    def set_version(self, handle: ChunkHandle, m: Mutation) -> ReplicaState:
        st = self._states.get(handle)
        self._data.setdefault(handle, bytearray())
        self._crcs.setdefault(handle, array("I"))
        return self._record(handle, m, st.length if st else 0)

    def read(self, handle: ChunkHandle, offset: int, size: int) -> bytes:
        st = self._states.get(handle)
        if st is None:
            raise NoReplica(handle)
        blocks.check_range(offset, size)
        end = min(offset + size, st.length)
        span = blocks.touched(offset, end - offset)
        if not span:
            return b""
        start = span[0] * BLOCK_SIZE
        buf = bytearray(len(span) * BLOCK_SIZE)
        stored = self._data[handle][start:st.length]
        buf[: len(stored)] = stored[: len(buf)]
        bad = native.verify_blocks(buf, self._crcs[handle][span[0]:span[-1] + 1], BLOCK_SIZE)
        if bad >= 0:
            raise CorruptBlock(handle, span[0] + bad)
        return bytes(buf[offset - start:end - start])

    def verify(self, handle: ChunkHandle) -> list[int]:
        st = self._states.get(handle)
        if st is None:
            raise NoReplica(handle)
        crcs = self._crcs[handle]
        buf = bytearray(len(crcs) * BLOCK_SIZE)
        stored = self._data[handle][: st.length]
        buf[: len(stored)] = stored
        return bad_blocks(buf, crcs)

    def delete(self, handle: ChunkHandle) -> bool:
        self._data.pop(handle, None)
        self._crcs.pop(handle, None)
        had_intents = self._intents.pop(handle, None) is not None
        for key in [k for k in self._staged if k[0] == handle]:
            del self._staged[key]
        return self._states.pop(handle, None) is not None or had_intents

    def space(self) -> Space:
        used = self._used()
        return Space(self.capacity, max(0, self.capacity - used), used)

    def close(self) -> None:
        pass

    # -- two-phase commit --------------------------------------------------------

    def intents(self, handle: ChunkHandle) -> list[Intent]:
        return sorted(self._intents.get(handle, {}).values(), key=lambda i: i.key)

    def intent_handles(self) -> list[ChunkHandle]:
        return [h for h, mine in self._intents.items() if mine]

    def aborted(self, handle: ChunkHandle) -> list[int]:
        return aborted_serials(self._states.get(handle), self.intents(handle))

    def stage(self, handle: ChunkHandle, key: IntentKey, data: bytes) -> None:
        pass  # memory is as durable as it gets here; `prepare` keeps the data

    def unstage(self, handle: ChunkHandle, key: IntentKey) -> None:
        pass

    def prepare(self, handle: ChunkHandle, intent: Intent, data: bytes) -> None:
        st = self._states.get(handle)
        if not intent.truncate:
            blocks.check_range(intent.offset, len(data))
            length = st.length if st else 0
            for b in blocks.partial_blocks(length, intent.offset, len(data)):
                self._old_block(handle, b, length)  # a corrupt replica votes no
            if self._used() + len(data) > self.capacity:
                raise NoSpace(f"chunk {handle}: no space to prepare {len(data)} bytes")
            self._staged[(handle, intent.key)] = bytes(data)
        self._intents.setdefault(handle, {})[intent.key] = intent
        self._fences[handle] = FencingToken(max(intent.token, self._fences.get(handle, 0)))

    def _decided(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken) -> None:
        """Forget `key`'s data and the markers of tokens older than `key`'s."""
        self._staged.pop((handle, key), None)
        mine = self._intents.get(handle, {})
        for k in [k for k, i in mine.items() if i.status is IntentStatus.ABORTED
                  and k[0] < key[0]]:
            del mine[k]
        self._fences[handle] = FencingToken(max(fence, self._fences.get(handle, 0)))

    def commit(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken,
               version: ChunkVersion, data: bytes | None = None) -> ReplicaState:
        intent = self._intents.get(handle, {}).get(key)
        if intent is None or not intent.undecided:
            raise StoreIOError(f"chunk {handle}: no prepared mutation {key} to commit")
        adopt = ChunkVersion(max(version, intent.version))
        m = Mutation(decided_state(self._states.get(handle), handle, adopt, key).version,
                     intent.token, intent.serial)
        if intent.truncate:
            st = self.truncate(handle, m, intent.offset, True)
        else:  # the space was reserved by the prepare
            st = self._write(handle, m, intent.offset, self._staged[(handle, key)],
                             check_space=False)
        del self._intents[handle][key]
        self._decided(handle, key, fence)
        return st

    def abort(self, handle: ChunkHandle, key: IntentKey, fence: FencingToken,
              version: ChunkVersion) -> ReplicaState:
        old = self._intents.get(handle, {}).get(key)
        if old is not None and not old.undecided:
            raise StoreIOError(f"chunk {handle}: mutation {key} was decided already")
        before = self._states.get(handle)
        st = decided_state(before, handle, old.version if old is not None else version, key)
        if before is not None:  # a replica never written stays without a state
            self._states[handle] = st
        marker = old or Intent(handle, key[0], key[1], version, 0, 0, False)
        self._intents.setdefault(handle, {})[key] = _aborted(marker)
        self._decided(handle, key, fence)
        return st

    def raise_fence(self, handle: ChunkHandle, token: FencingToken) -> None:
        self._fences[handle] = FencingToken(max(token, self._fences.get(handle, 0)))

    def checkpoint(self, handle: ChunkHandle) -> int:
        return 0  # nothing is ever only in a page cache here


def _aborted(intent: Intent) -> Intent:
    return Intent(intent.handle, intent.token, intent.serial, intent.version, intent.offset,
                  intent.length, intent.truncate, IntentStatus.ABORTED)
