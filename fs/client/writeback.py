"""Write-behind: buffered writes of a file go to the chunk servers in background
flush jobs, at most `flushes_in_flight` per file at once.

`write` adds to the file's buffer and, when the buffer is full (bytes or
extents), hands it to a new job; `flush` hands over what is left and waits
until every job of the file has finished, then reports the first failure
of buffered data since the last report (`FileState.error`).

A job: (1) leases and pushes for every extent, concurrently with the other
jobs; (2) writes each extent once no earlier job still has to write an
overlapping range (`FileState.wait_clear`: the last write of a byte lands
last; disjoint ranges - sequential writing - go concurrently, which lets
the primary apply one write while it forwards the previous one); (3)
`SetSize(max end)`, which also stamps mtime and clears set-id bits for a
non-root writer.  A job is bounded by the
operation timeout; its failure is translated once (fs/client/errors.py)
and kept on the file for the next write/flush/fsync/release.

Invariants: a job never raises into the nursery that runs it; the buffer a
job took is never touched again by anyone else; `FileState.jobs` counts
running jobs exactly (decremented in `finally`).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from fs.client.buffer import Extent
from fs.client.chunkio import ChunkIO, Pushed
from fs.client.config import FsClientConfig
from fs.client.errors import TRANSLATED, translate
from fs.client.files import FileState
from fs.client.tasks import run_all
from fs.types import Attr, Cred, FsError, InodeId

log = logging.getLogger(__name__)


class SizeOps(Protocol):
    async def set_size(self, inode: InodeId, size: int, truncate: bool, cred: Cred) -> Attr: ...


class WriteBack:
    def __init__(
        self, io: ChunkIO, meta: SizeOps, config: FsClientConfig, nursery: trio.Nursery,
        on_idle: Callable[[FileState], None],
    ) -> None:
        self._io = io
        self._meta = meta
        self._config = config
        self._nursery = nursery  # runs the jobs; owned by NetworkFs
        self._on_idle = on_idle  # called when a job ends (the state may be dropped)
        self._running = 0  # jobs running, all files

    async def write(self, state: FileState, offset: int, data: bytes, cred: Cred) -> None:
        """Buffer one accepted write, starting a job when the buffer fills."""
        buf = state.buffer
        if buf.size and (buf.size + len(data) > self._config.write_buffer
                         or len(buf) >= self._config.max_extents):
            await self.start(state)
        state.buffered(offset, data, cred, time.time_ns())
        if state.buffer.size >= self._config.write_buffer:
            await self.start(state)

    def busy(self) -> bool:
        """Is any flush job running (for tests and shutdown)?"""
        return self._running > 0

    async def start(self, state: FileState) -> None:
        """Hand the buffer to a new job, once fewer than the limit are running."""
        await state.wait_jobs_below(self._config.flushes_in_flight)
        if not state.buffer.size:
            return  # another task took it while we waited
        extents = state.buffer.take()
        ticket, cred = state.start_job([(e.start, e.end) for e in extents])
        self._running += 1
        self._nursery.start_soon(self._job, state, ticket, extents, cred,
                                 name=f"flush-{state.inode}-{ticket}")

    async def drain(self, state: FileState) -> None:
        """Every write so far has been tried on the chunk servers (failures stay
        on the file for the next write/flush/fsync/release to report)."""
        if state.buffer.size:
            await self.start(state)
        await state.wait_jobs_below(1)

    async def flush(self, state: FileState) -> None:
        """Everything written so far is on the chunk servers (or its failure is raised)."""
        await self.drain(state)
        error = state.take_error()
        if error is not None:
            raise error

    async def _job(self, state: FileState, ticket: int, extents: list[Extent], cred: Cred) -> None:
        try:
            with trio.fail_after(self._config.op_timeout):
                await self._write_extents(state, ticket, extents)
                end = max(e.end for e in extents)
                state.note(await self._meta.set_size(state.inode, end, False, cred))
        except TRANSLATED as exc:
            error = translate(exc, f"writing inode {state.inode}")
            log.warning("buffered data of inode %d not written: %s", state.inode, error)
            state.fail(error)
        except Exception:  # a bug: keep the client alive, fail the file's data loudly
            log.exception("flush job of inode %d failed", state.inode)
            state.fail(FsError(errno.EIO, "internal error while writing"))
        finally:
            state.end_job(ticket)
            self._running -= 1
            self._on_idle(state)

    async def _write_extents(self, state: FileState, ticket: int, extents: list[Extent]) -> None:
        staged = await self._stage(state.inode, extents)

        def writer(extent: Extent, pushed: Pushed | None) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                await state.wait_clear(ticket, extent.start, extent.end)
                try:
                    await self._io.write(state.inode, extent, pushed)
                finally:
                    state.written(ticket, extent.start, extent.end)
            return run

        await run_all([writer(e, p) for e, p in zip(extents, staged, strict=True)],
                      self._config.push_window, f"write-{state.inode}")

    async def _stage(self, inode: InodeId, extents: Sequence[Extent]) -> list[Pushed | None]:
        """Leases and pushes ahead of the writes; a failure here is left for the
        write itself to retry and report (None: push at write time)."""
        staged: list[Pushed | None] = [None] * len(extents)

        def stager(k: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                try:
                    staged[k] = (await self._io.push_for(inode, extents[k]))[1]
                except TRANSLATED as exc:
                    log.debug("early push for inode %d failed: %s", inode, exc)
            return run

        await run_all([stager(k) for k in range(len(extents))], self._config.push_window,
                      f"stage-{inode}")
        return staged
