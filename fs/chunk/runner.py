"""What every chunk-server request handler shares: per-chunk locks and change
events, and the one way to call the (blocking) store.

Invariants:

* `ChunkLocks.hold(h)` serialises everything that decides on and then
  changes chunk `h`'s state: admission decisions are made on the state
  they change.  Locks exist only while held or awaited (bounded memory).
* `notify(h)` wakes every task waiting on `changed(h)`; every change of a
  chunk's state or intents is followed by a `notify`, so waiters (a
  decision waiting for its predecessor, a read waiting for an undecided
  mutation) re-check instead of sleeping out their bound.
* `Runner.store` runs a store call in a worker thread (fsync blocks) and
  is the only place store errors become protocol error codes; a corrupt
  block is also queued for reporting to the metadata leader (bounded
  queue: a flood is dropped, the next read of the block reports it again).
* `shielded`: once a store call that changes state has started, the
  bookkeeping after it (notify) runs even if the request is cancelled
  (its caller went away), so no waiter misses a change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from coord.rpc import RemoteError
from fs.chunk import protocol as p
from fs.chunk.store import ChunkStore, CorruptBlock, NoReplica, NoSpace, StoreError
from fs.types import ChunkHandle

log = logging.getLogger(__name__)
T = TypeVar("T")


class ChunkLocks:
    """One trio.Lock per chunk, created on demand and dropped when unused,
    plus a per-chunk event set whenever the chunk's state changed."""

    def __init__(self) -> None:
        self._locks: dict[ChunkHandle, tuple[trio.Lock, int]] = {}
        self._changed: dict[ChunkHandle, trio.Event] = {}

    @asynccontextmanager
    async def hold(self, handle: ChunkHandle) -> AsyncIterator[None]:
        lock, users = self._locks.get(handle, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[handle] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[handle]
            if users == 1:
                del self._locks[handle]
            else:
                self._locks[handle] = (lock, users - 1)

    def changed(self, handle: ChunkHandle) -> trio.Event:
        """An event that will be set at the chunk's next state change."""
        return self._changed.setdefault(handle, trio.Event())

    def notify(self, handle: ChunkHandle) -> None:
        event = self._changed.pop(handle, None)
        if event is not None:
            event.set()


class Runner:
    """Store calls in worker threads, with the store's errors as protocol codes."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.locks = ChunkLocks()
        self.bad_send, self.bad_recv = trio.open_memory_channel[ChunkHandle](256)

    def corrupt(self, exc: CorruptBlock) -> RemoteError:
        log.warning("%s", exc)
        try:
            self.bad_send.send_nowait(exc.handle)
        except trio.WouldBlock:
            log.warning("bad-replica queue full; not reporting chunk %d now", exc.handle)
        return RemoteError(p.CHECKSUM, str(exc))

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking store call in a thread, translating its errors."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except CorruptBlock as exc:
            raise self.corrupt(exc) from None
        except NoReplica as exc:
            raise RemoteError(p.NO_CHUNK, str(exc)) from None
        except NoSpace as exc:
            raise RemoteError(p.ENOSPC, str(exc)) from None
        except StoreError as exc:
            raise RemoteError(p.EIO, str(exc)) from None
        except ValueError as exc:
            raise RemoteError(p.BAD_ARGS, str(exc)) from None

    async def change(self, handle: ChunkHandle, fn: Callable[..., T], *args: object) -> T:
        """A state-changing store call (the caller holds the chunk's lock): it
        runs to its end and waiters hear of it, even if the request is
        cancelled meanwhile."""
        with trio.CancelScope(shield=True):
            try:
                result = await self.call(fn, *args)
            finally:
                self.locks.notify(handle)
        return result
