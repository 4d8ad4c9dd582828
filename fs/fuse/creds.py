"""Who is calling: FUSE passes uid, gid and pid; the supplementary groups are
read from /proc/<pid>/status ("Groups:" line), because the kernel does not
send them and permission checks on group members need them.

Invariants:
* a cached answer is at most `ttl` seconds old and is keyed by (pid, uid,
  gid), so a recycled pid running as another user never inherits groups;
  within `ttl` a process that called setgroups(2) may still be seen with its
  old groups (the kernel, under default_permissions, has already checked);
* the cache holds at most `size` entries (oldest evicted first);
* pid 0 (requests with no calling process, e.g. from another pid namespace)
  and vanished processes get no supplementary groups.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from fs.types import Cred

StatusReader = Callable[[int], str | None]  # pid -> /proc/<pid>/status text, None if gone


def parse_groups(status: str) -> tuple[int, ...]:
    """The supplementary groups on the "Groups:" line of a /proc status text."""
    for line in status.splitlines():
        if line.startswith("Groups:"):
            return tuple(sorted({int(word) for word in line[7:].split()}))
    return ()


def read_proc_status(pid: int) -> str | None:
    # The thread id FUSE gives names a readable /proc entry as well.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            return status.read()
    except OSError:
        return None


class GroupCache:
    """Supplementary groups per calling process, cached briefly."""

    def __init__(
        self,
        ttl: float = 1.0,
        size: int = 256,
        *,
        clock: Callable[[], float] = time.monotonic,
        reader: StatusReader = read_proc_status,
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._reader = reader
        # (pid, uid, gid) -> (read at, groups); insertion order = age
        self._entries: OrderedDict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = (
            OrderedDict()
        )
        self.reads = 0  # /proc reads done (for tests and stats)

    def cred(self, uid: int, gid: int, pid: int) -> Cred:
        return Cred(uid, gid, self.groups(pid, uid, gid), pid)

    def groups(self, pid: int, uid: int, gid: int) -> tuple[int, ...]:
        if pid <= 0:
            return ()
        key = (pid, uid, gid)
        now = self._clock()
        cached = self._entries.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        self.reads += 1
        status = self._reader(pid)
        groups = parse_groups(status) if status is not None else ()
        self._entries.pop(key, None)
        self._entries[key] = (now, groups)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return groups
