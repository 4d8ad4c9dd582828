"""lossyfs: a test file system that throws away everything not fsynced.

A pyfuse3 pass-through over a backing folder, run as its own process.  File
contents become durable (reach the backing folder) only through fsync,
fdatasync or O_SYNC/O_DSYNC writes; namespace and metadata changes are
durable at once.  Killing the process is the crash: `LossyMount.crash()`
kills it and mounts a fresh one, so a program restarted on the mount sees
exactly what it had made durable.  See docs/testing-fsync.md.

Modules: `overlay` (pure model of un-fsynced contents), `fs` (the FUSE
operations), `__main__` (the process), `control` (start/crash/stop from a
test), `fixtures` (pytest fixtures).
"""

from tests.lossyfs.control import LossyFSError, LossyMount, is_mounted, unmount_lazily
from tests.lossyfs.overlay import PAGE_SIZE, FlushPlan, Overlay

__all__ = [
    "PAGE_SIZE",
    "FlushPlan",
    "LossyFSError",
    "LossyMount",
    "Overlay",
    "is_mounted",
    "unmount_lazily",
]
