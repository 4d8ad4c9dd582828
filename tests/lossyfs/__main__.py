"""Run lossyfs: `python -m tests.lossyfs BACKING MOUNTPOINT`.

Lifecycle contract (what `tests.lossyfs.control` relies on):
* after the mount exists, the line `ready` is written to `--ready-fd`;
* SIGTERM/SIGINT is a clean unmount: every overlay is flushed and fsynced
  first, as a real file system does on umount;
* SIGKILL is the crash: the overlays die with the process;
* if the parent process goes away (the test runner was killed), the mount is
  dropped without flushing, so no stale mount outlives its test run.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence

import pyfuse3
import trio

from tests.lossyfs.fs import LossyFS

log = logging.getLogger("tests.lossyfs")

PARENT_POLL_SECONDS = 0.5


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lossyfs",
        description="pass-through FUSE file system that loses everything not fsynced when killed",
    )
    parser.add_argument("backing", help="folder that holds the durable contents")
    parser.add_argument("mountpoint", help="where to mount")
    parser.add_argument(
        "--ready-fd", type=int, default=None, help="write 'ready' to this fd once mounted"
    )
    parser.add_argument(
        "--watch-parent",
        action="store_true",
        help="unmount (without flushing) when the parent process exits",
    )
    parser.add_argument("--debug", action="store_true", help="log every flush")
    return parser.parse_args(argv)


async def _on_signals(ops: LossyFS) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            flushed = ops.flush_all()
            log.info("signal %d: flushed %d files, unmounting", signum, flushed)
            pyfuse3.terminate()
            return


async def _watch_parent(parent: int) -> None:
    # Bounded by the parent's life: it ends the file system when the parent goes.
    while os.getppid() == parent:
        await trio.sleep(PARENT_POLL_SECONDS)
    log.warning("parent %d is gone: dropping the mount without flushing", parent)
    pyfuse3.terminate()


async def _serve(ops: LossyFS, ready_fd: int | None, parent: int | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, ops, name="lossyfs-signals")
        if parent is not None:
            nursery.start_soon(_watch_parent, parent, name="lossyfs-parent-watch")
        if ready_fd is not None:
            # The mount exists since pyfuse3.init; requests queue until main runs.
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s lossyfs[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    os.umask(0)  # modes arrive from the kernel with the caller's umask applied
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one O_PATH fd per inode
    parent = os.getppid() if args.watch_parent else None
    ops = LossyFS(args.backing)
    options = set(pyfuse3.default_options) | {"fsname=lossyfs", "subtype=lossyfs"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(_serve, ops, args.ready_fd, parent)
    finally:
        pyfuse3.close(unmount=True)
    log.info("unmounted %s", args.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
