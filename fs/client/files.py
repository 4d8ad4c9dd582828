"""Open files of one client: handles, and per-inode state shared by the handles.

A `Handle` is one FsApi open (one `Open` registered with the metadata
service).  A `FileState` exists for every inode that has handles or data
not yet written to the chunk servers; all handles of an inode share it, so
writes through two handles of one inode land in one buffer in the order
they were made.

Invariants of `FileState`:
* `dirty` <=> the buffer holds bytes or a flush job is running;
* `size` is what this client knows the file's size to be: the metadata
  service's last answer, grown by the writes this client accepted while
  they are not yet flushed (after a flush, the `SetSize` answer covers
  them); `overlay(attr)` applies the same rule (and the pending mtime and
  set-id removal) to attributes handed to the caller, so a `stat` right
  after `write` sees the new size, as on a local disk;
* flush jobs get tickets in the order they were started, and register the
  byte ranges they will write at that moment; a job writes a range only
  when no job with an earlier ticket still has an overlapping range
  unwritten (`wait_clear`), so the last write of a byte lands last, while
  writes of disjoint ranges - the sequential case - run concurrently;
* `error` holds the first failure of buffered data not yet reported; it is
  reported once, by the next write/flush/fsync/release (as NFS does).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field, replace

import trio

from fs import posix
from fs.client.buffer import WriteBuffer
from fs.types import ROOT_CRED, Attr, Cred, FsError, InodeId


@dataclass(slots=True)
class Handle:
    inode: InodeId
    flags: int  # open(2) flags (access mode, O_APPEND)
    cred: Cred  # the opener (a non-root writer loses set-id bits at the next flush)
    kind: int  # S_IFMT of the inode when opened
    generation: int  # the metadata session it was registered in


@dataclass(slots=True, eq=False)
class FileState:
    inode: InodeId
    attr: Attr  # the metadata service's last answer about this inode
    opens: int = 0  # handles of this client on the inode
    buffer: WriteBuffer = field(default_factory=WriteBuffer)
    written_end: int = 0  # end of the furthest write accepted since the last truncate
    pending_mtime_ns: int = 0  # wall-clock time of the last write not yet flushed
    writer: Cred = ROOT_CRED  # the SetSize credential: any non-root writer since the last flush
    jobs: int = 0  # flush jobs running
    next_ticket: int = 0  # the ticket the next job gets
    # ticket -> byte ranges [start, end) that job has not written yet
    _pending: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    error: FsError | None = None  # failure of buffered data, not yet reported
    _lot: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    # ------------------------------------------------------------------ state
    @property
    def dirty(self) -> bool:
        return self.buffer.size > 0 or self.jobs > 0

    @property
    def size(self) -> int:
        if self.dirty:
            return max(self.attr.size, self.written_end)
        return self.attr.size

    def note(self, attr: Attr) -> None:
        """A fresh answer from the metadata service about this inode."""
        self.attr = attr

    def overlay(self, attr: Attr) -> Attr:
        """`attr` as the caller should see it, given this client's unflushed writes."""
        self.note(attr)
        if not self.dirty:
            return attr
        mode = attr.mode if self.writer.is_root else posix.killed_privs(attr.mode)
        mtime = max(attr.mtime_ns, self.pending_mtime_ns)
        return replace(attr, size=self.size, mode=mode, mtime_ns=mtime,
                       ctime_ns=max(attr.ctime_ns, mtime))

    def buffered(self, offset: int, data: bytes, cred: Cred, now_ns: int) -> None:
        """Record an accepted write."""
        self.buffer.add(offset, data)
        self.written_end = max(self.written_end, offset + len(data))
        self.pending_mtime_ns = now_ns
        if not cred.is_root:
            self.writer = cred

    def truncated(self, attr: Attr) -> None:
        self.note(attr)
        self.written_end = min(self.written_end, attr.size)

    def take_error(self) -> FsError | None:
        error, self.error = self.error, None
        return error

    def fail(self, error: FsError) -> None:
        if self.error is None:
            self.error = error

    # ------------------------------------------------------------------ jobs
    def start_job(self, ranges: list[tuple[int, int]]) -> tuple[int, Cred]:
        """A ticket and the credential for a job that will write `ranges` (taken
        from the buffer just now)."""
        ticket, self.next_ticket = self.next_ticket, self.next_ticket + 1
        self.jobs += 1
        self._pending[ticket] = list(ranges)
        cred, self.writer = self.writer, ROOT_CRED
        return ticket, cred

    def _blocked(self, ticket: int, start: int, end: int) -> bool:
        return any(
            earlier < ticket and s < end and start < e
            for earlier, ranges in self._pending.items()
            for s, e in ranges
        )

    async def wait_clear(self, ticket: int, start: int, end: int) -> None:
        """Until no earlier job has bytes of [start, end) left to write."""
        for _ in range(1 << 30):  # woken at every change; bounded by the caller's deadline
            if not self._blocked(ticket, start, end):
                return
            await self._lot.park()

    def written(self, ticket: int, start: int, end: int) -> None:
        """The job `ticket` has written (or given up on) [start, end)."""
        ranges = self._pending.get(ticket)
        if ranges is not None and (start, end) in ranges:
            ranges.remove((start, end))
            self._lot.unpark_all()

    def end_job(self, ticket: int) -> None:
        self._pending.pop(ticket, None)
        self.jobs -= 1
        self._lot.unpark_all()

    async def wait_jobs_below(self, count: int) -> None:
        for _ in range(1 << 30):
            if self.jobs < count:
                return
            await self._lot.park()

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.attr.mode)
