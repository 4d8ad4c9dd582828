"""Mount an `FsApi` with FUSE and serve it until unmounted.

Lifecycle (`serve`, run inside trio): pyfuse3.init mounts (requests queue in
the kernel from then on) -> pyfuse3.main answers requests -> once a stat of
the mountpoint has been answered, read-ahead is raised and `ready()` is
called (the mount is usable) -> pyfuse3.main returns when the
mount goes away (`fusermount3 -u`, `ddfs umount`) or when `request_unmount()`
runs (SIGTERM, SIGINT, SIGHUP) -> pyfuse3.close unmounts -> the FsApi hears
that the kernel forgot every inode.

Invariants:
* once pyfuse3.init has succeeded, pyfuse3.close(unmount=True) runs however
  `serve` ends (signal, error, cancellation): no mount outlives its process
  unless the process is killed with SIGKILL (then `fusermount3 -u -z`);
* the trio thread never touches its own mountpoint (the request would wait
  for an answer only this thread can give): the path is resolved before
  mounting, the device number comes from /proc/self/mountinfo, and the
  readiness stat runs in a worker thread while pyfuse3.main answers it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import pyfuse3
import trio

from fs.api import FsApi
from fs.fuse.config import MountConfig
from fs.fuse.operations import Operations

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class MountError(Exception):
    """The mount could not be made (no such mountpoint, no /dev/fuse, not permitted)."""


def request_unmount() -> None:
    """Make `serve` return and unmount (call from the trio thread)."""
    pyfuse3.terminate()


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mount_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """"major:minor" of the topmost ddfs mount at `mountpoint` (a resolved path:
    resolving it here would stat the mount), None if absent."""
    target = mountpoint
    found = None
    with open(mountinfo, encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target and "fuse.ddfs" in fields:
                found = fields[2]
    return found


def set_read_ahead(mountpoint: str, kilobytes: int) -> bool:
    """Raise the kernel read-ahead of the mount (root only); False if it could not.
    `mountpoint` must be resolved (os.path.realpath) before the mount exists."""
    device = mount_device(mountpoint)
    if device is None:
        log.warning("read-ahead: %s is not in /proc/self/mountinfo", mountpoint)
        return False
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w", encoding="ascii") as knob:
            knob.write(f"{kilobytes}\n")
    except OSError as exc:
        log.warning("read-ahead of %s stays at the kernel default: %s", mountpoint, exc)
        return False
    return True


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            request_unmount()
            return


async def _when_usable(
    mountpoint: str, read_ahead_kb: int | None, ready: Callable[[], None]
) -> None:
    """Wait until the kernel has our answer to a request, then tune and announce.

    The stat runs in a worker thread while pyfuse3.main answers it here: it
    returns only after the FUSE handshake (INIT) and one getattr went through.
    Read-ahead is set after INIT because the kernel caps it at the value
    negotiated there.
    """
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    if read_ahead_kb is not None:
        set_read_ahead(mountpoint, read_ahead_kb)
    ready()


async def serve(
    fs: FsApi,
    config: MountConfig,
    *,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Mount `fs` at `config.mountpoint` and answer the kernel until unmounted."""
    config.validate()
    mountpoint = os.path.realpath(config.mountpoint)  # before mounting: see the invariants
    ops = Operations(fs, config.fuse)
    try:
        pyfuse3.init(ops, config.mountpoint, config.fuse_options())
    except RuntimeError as exc:
        raise MountError(f"cannot mount at {config.mountpoint}: {exc}") from None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, name="ddfs-mount-signals")
            nursery.start_soon(
                _when_usable, mountpoint, config.read_ahead_kb, ready, name="ddfs-mount-ready"
            )
            await pyfuse3.main(max_tasks=config.fuse.max_tasks)
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", config.mountpoint)
    await ops.forget_all()
