"""A replica's side of the two-phase commit (every replica, the primary's own
copy included): prepare, decide, report, and hold reads back from undecided
mutations.  The driver around `ChunkGate` (admission) and the store.

Invariants:

* Prepare and decide run under the chunk's lock from the admission
  decision to the end of the store call (fs/chunk/runner.py), so each is
  decided on the state it changes.
* A repeated prepare of an intent still PREPARED is acknowledged again
  without touching the store (prepares are retried by the RPC layer); a
  repeat that arrives while the first attempt is still staging waits for
  it (the first took the pushed data).
* Decisions are taken in serial order per (chunk, token): an early one
  waits (bounded by `order_wait`) for the chunk's next change and is
  re-admitted; a repeated one is acknowledged if it agrees with what was
  decided and refused (EIO) if it contradicts it.
* `inquire` with a fence accepts the fence durably before it answers, under
  the chunk's lock: every prepare or decision of an older token is refused
  afterwards, so the answer stays true for the new primary.
* A read overlapping an undecided mutation waits for its decision here, at
  most `decision_wait`, then is refused IN_DOUBT: prepared data is never
  readable, and a reader is not served the old bytes while some other
  replica may already serve the new ones.
"""

from __future__ import annotations

import trio

from coord.lease import FencingToken
from coord.rpc import RemoteError
from fs.chunk import protocol as p
from fs.chunk.intent import Intent, IntentKey, committed
from fs.chunk.ordering import Admit, ChunkGate, Duplicate, Reject, Wait
from fs.chunk.runner import Runner
from fs.chunk.store import older_undecided, position
from fs.types import CHUNK_SIZE, ChunkHandle, ChunkVersion


def reject(r: Reject) -> RemoteError:
    return RemoteError(r.code, r.message)


def check_range(offset: int, size: int) -> None:
    if offset < 0 or size < 0 or offset + size > CHUNK_SIZE:
        raise RemoteError(p.BAD_ARGS, f"range [{offset}, {offset + size}) is outside a chunk")


class Participant:
    def __init__(self, runner: Runner, gate: ChunkGate, *, order_wait: float,
                 decision_wait: float, held_limit: int = 256 << 20) -> None:
        self._run = runner
        self._store = runner.store
        self._locks = runner.locks
        self._gate = gate
        self._order_wait = order_wait
        self._decision_wait = decision_wait
        # Data of prepared mutations kept for their commit, so the commit need
        # not read it back from the staged file (bounded: beyond, it does).
        self._held: dict[tuple[ChunkHandle, IntentKey], bytes] = {}
        self._held_bytes = 0
        self._held_limit = held_limit
        # Prepares running, so that a retry (the RPC layer resends prepares)
        # waits for the first attempt, which took the staged data.
        self._preparing: dict[tuple[ChunkHandle, IntentKey], trio.Event] = {}

    async def prepare(self, req: p.ChunkPrepare, data: bytes | None, *,
                      primary: bool) -> p.PrepareReply:
        """Phase 1 here: stage the mutation durably, or refuse (a no vote).  The
        data is staged outside the chunk's lock (it changes no state), so that
        the decision on the previous mutation can be taken meanwhile."""
        handle, key = req.handle, (req.token, req.serial)
        check_range(req.offset, 0 if req.truncate or data is None else len(data))
        running = self._preparing.get((handle, key))
        if running is not None:  # a retry while the first attempt stages: await it
            await running.wait()
        self._preparing[(handle, key)] = done = trio.Event()
        try:
            return await self._prepare(req, data, primary)
        finally:
            done.set()
            if self._preparing.get((handle, key)) is done:
                del self._preparing[(handle, key)]

    async def _prepare(self, req: p.ChunkPrepare, data: bytes | None,
                       primary: bool) -> p.PrepareReply:
        handle, key = req.handle, (req.token, req.serial)
        async with self._locks.hold(handle):
            if self._admit_prepare(req, primary) is None:
                return p.PrepareReply(req.serial)  # a retry: voted already
        if not req.truncate and data is None:
            raise RemoteError(p.NO_DATA, f"no staged data {req.data_id} from {req.origin} "
                                         "(expired or never pushed)")
        if data is not None:
            await self._run.call(self._store.stage, handle, key, data)
        try:
            async with self._locks.hold(handle):
                d = self._admit_prepare(req, primary)
                if d is None:
                    return p.PrepareReply(req.serial)
                size = 0 if data is None else len(data)
                intent = Intent(handle, req.token, req.serial, d.version, req.offset,
                                0 if req.truncate else size, req.truncate)
                await self._run.change(handle, self._store.prepare, handle, intent, data or b"")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._run.call(self._store.unstage, handle, key)
            raise
        if data is not None:
            self._hold(handle, key, data)
        return p.PrepareReply(req.serial)

    def _admit_prepare(self, req: p.ChunkPrepare, primary: bool) -> Admit | None:
        """With the chunk's lock held: admit the prepare (None: prepared already)."""
        handle, key = req.handle, (req.token, req.serial)
        intents = self._store.intents(handle)
        if any(i.key == key and i.undecided for i in intents):
            return None
        d = self._gate.prepare(position(self._store.state(handle), intents), handle,
                               req.version, req.token, req.serial,
                               older_undecided=older_undecided(intents, req.token),
                               primary=primary)
        if isinstance(d, Reject):
            raise reject(d)
        return d

    def _hold(self, handle: ChunkHandle, key: IntentKey, data: bytes) -> None:
        """Keep a prepared mutation's data for its commit (else read back from
        disk), within a memory bound."""
        if self._held_bytes + len(data) <= self._held_limit:
            self._held[(handle, key)] = data
            self._held_bytes += len(data)

    def _unhold(self, handle: ChunkHandle, key: IntentKey) -> bytes | None:
        data = self._held.pop((handle, key), None)
        if data is not None:
            self._held_bytes -= len(data)
        return data

    def forget(self, handle: ChunkHandle) -> None:
        """The replica was deleted: drop what was held for its commits."""
        for h, key in [k for k in self._held if k[0] == handle]:
            self._unhold(h, key)

    async def decide(self, req: p.ChunkDecide, deadline: float) -> p.DecideReply:
        """Phase 2 here, in serial order (waits for earlier decisions, bounded)."""
        handle = req.handle
        with trio.move_on_at(min(deadline, trio.current_time() + self._order_wait)):
            while True:
                async with self._locks.hold(handle):
                    reply = await self._try_decide(req)
                    if reply is not None:
                        return reply
                    changed = self._locks.changed(handle)
                await changed.wait()
        raise RemoteError(p.OUT_OF_ORDER, f"chunk {handle}: the decision on serial {req.serial} "
                                          f"still waits for an earlier one after "
                                          f"{self._order_wait} s")

    async def _try_decide(self, req: p.ChunkDecide) -> p.DecideReply | None:
        """Called with the chunk's lock held; None: wait for an earlier decision."""
        handle, key = req.handle, (req.token, req.serial)
        intents = self._store.intents(handle)
        state = position(self._store.state(handle), intents)
        d = self._gate.decide(state, handle, req.fence, req.token, req.serial,
                              older_undecided=older_undecided(intents, req.token))
        if isinstance(d, Wait):
            return None
        if isinstance(d, Reject):
            raise reject(d)
        if isinstance(d, Duplicate):
            assert state is not None
            mine = committed(state.token, state.serial, set(self._store.aborted(handle)), key)
            if mine is not req.commit:
                raise RemoteError(p.EIO, f"chunk {handle}: mutation {key} was decided "
                                         f"{'committed' if mine else 'aborted'} here")
            return p.DecideReply(state.version)
        assert isinstance(d, Admit)
        data = self._unhold(handle, key)
        if req.commit:
            new = await self._run.change(handle, self._store.commit, handle, key, req.fence,
                                         req.version, data)
        else:
            new = await self._run.change(handle, self._store.abort, handle, key, req.fence,
                                         req.version)
        return p.DecideReply(new.version)

    async def inquire(self, req: p.ChunkIntents) -> p.IntentsReply:
        """What this replica decided and holds undecided (after accepting the fence)."""
        handle = req.handle
        async with self._locks.hold(handle):
            if req.fence > 0:
                fence = FencingToken(req.fence)
                d = self._gate.fence(handle, fence)
                if isinstance(d, Reject):
                    raise reject(d)
                if d.raised:
                    await self._run.change(handle, self._store.raise_fence, handle, fence)
            intents = self._store.intents(handle)
            state = position(self._store.state(handle), intents)
            aborted = self._store.aborted(handle)
        prepared = [i.key for i in intents if i.undecided]
        if state is None:
            return p.IntentsReply(bool(intents), ChunkVersion(0), FencingToken(0), 0, [],
                                  [(int(t), s) for t, s in prepared])
        return p.IntentsReply(True, state.version, state.token, state.serial, aborted,
                              [(int(t), s) for t, s in prepared])

    async def readable(self, handle: ChunkHandle, offset: int, length: int,
                       deadline: float) -> None:
        """Return once no undecided mutation overlaps the range (IN_DOUBT at the bound)."""
        bound = min(deadline, trio.current_time() + self._decision_wait)
        while True:
            blocking = [i.key for i in self._store.intents(handle)
                        if i.undecided and i.overlaps(offset, length)]
            if not blocking:
                return
            if trio.current_time() >= bound:
                raise RemoteError(p.IN_DOUBT, f"chunk {handle}: mutation {blocking[0]} "
                                              "overlapping the read is undecided here")
            changed = self._locks.changed(handle)
            with trio.move_on_at(bound):
                await changed.wait()
