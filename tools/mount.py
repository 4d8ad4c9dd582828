"""`ddfs mount`: mount a ddfs file system with FUSE.

    ddfs mount [--backend cluster|memfs] [--mode remote|cache] [--meta ENDPOINTS]
               [--secret-file F] [--config F] [--attr-timeout S] [--entry-timeout S]
               [--negative-timeout S] [--op-timeout S] [-o OPTIONS] [--read-ahead-kb N]
               [--foreground] [--log-file F] MOUNTPOINT

Prints "mounted at MOUNTPOINT" once the mount is usable.  Without
--foreground the command returns then and a detached process serves the
mount until `ddfs umount MOUNTPOINT` (or `fusermount3 -u`); with it, the
command serves in the foreground until unmounted or sent SIGTERM/SIGINT.

Backends: `cluster` (the default) is the networked client (fs/client) on
the metadata servers named by --meta (or a cluster file, --config) with the
cluster secret; `memfs` keeps everything in this process's memory (tests,
demos).  Test hooks of memfs (`--memfs-test-hooks`): SIGUSR1 makes
every file-system call hang (the mount then answers ETIMEDOUT after
--op-timeout), SIGUSR2 ends the hang; `--memfs-populate NAME=N` starts with a
directory /NAME holding N names (hard links of one empty file).

This module reads the command line and builds config objects; fs/fuse does
the rest.  `python -m tools.mount ...` runs it without the `ddfs` wrapper.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tools.cli import UserError

if TYPE_CHECKING:
    from fs.api import FsApi
    from fs.fuse.config import MountConfig
    from fs.memfs import MemFs

log = logging.getLogger("ddfs.mount")

PARENT_POLL_SECONDS = 0.5
CLIENT_TIMEOUT_SHARE = 0.9  # of --op-timeout, for the networked client's own bound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    parser.add_argument("--backend", choices=("cluster", "memfs"), default="cluster",
                        help="cluster: the networked file system (default); memfs: in memory")
    parser.add_argument("--mode", choices=("remote", "cache"), default="remote",
                        help="remote: NFS-like, close-to-open (default); cache: AFS-like")
    parser.add_argument("--meta", metavar="ENDPOINTS",
                        help="metadata servers, host:port[,host:port...] (cluster backend)")
    parser.add_argument("--secret-file", type=Path, metavar="F",
                        help="the cluster secret (default: $DDFS_SECRET_FILE, or $DDFS_SECRET)")
    parser.add_argument("--config", type=Path, metavar="F",
                        help="a cluster file (`ddfs cluster`): fills --meta, --secret-file, -o")
    parser.add_argument("--attr-timeout", type=float, default=1.0, metavar="S",
                        help="seconds the kernel caches attributes (default 1)")
    parser.add_argument("--entry-timeout", type=float, default=1.0, metavar="S",
                        help="seconds the kernel caches names (default 1)")
    parser.add_argument("--negative-timeout", type=float, default=None, metavar="S",
                        help="seconds the kernel caches 'no such name' (default: entry timeout)")
    parser.add_argument("--op-timeout", type=float, default=30.0, metavar="S",
                        help="every operation answers within this (ETIMEDOUT), default 30")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                        help="extra mount options, comma-separated (e.g. ro,noexec)")
    parser.add_argument("--read-ahead-kb", type=int, default=1024, metavar="N",
                        help="kernel read-ahead of the mount in KiB (default 1024; -1: leave)")
    parser.add_argument("--foreground", "-f", action="store_true",
                        help="serve in this process until unmounted")
    parser.add_argument("--log-file", metavar="F", help="log here (background mounts)")
    parser.add_argument("--watch-parent", action="store_true",
                        help="unmount when the parent process exits (for supervisors, tests)")
    parser.add_argument("--memfs-capacity", type=int, default=1 << 40, metavar="BYTES",
                        help="memfs: data capacity (ENOSPC beyond)")
    parser.add_argument("--memfs-populate", action="append", default=[], metavar="NAME=N",
                        help="memfs: start with directory /NAME holding N names")
    parser.add_argument("--memfs-test-hooks", action="store_true",
                        help="memfs: SIGUSR1 hangs every call, SIGUSR2 resumes")


def _configs(args: argparse.Namespace) -> MountConfig:
    from fs.fuse.config import FuseConfig, MountConfig

    remote = args.mode == "remote"
    fuse = FuseConfig(
        entry_timeout=args.entry_timeout,
        attr_timeout=args.attr_timeout,
        negative_timeout=(
            args.entry_timeout if args.negative_timeout is None else args.negative_timeout
        ),
        op_timeout=args.op_timeout,
        keep_cache=not remote,
        revalidate_on_open=remote,
    )
    options = tuple(o for group in args.options for o in group.split(",") if o)
    config = MountConfig(
        mountpoint=os.path.abspath(args.mountpoint),
        fuse=fuse,
        options=options,
        read_ahead_kb=None if args.read_ahead_kb < 0 else args.read_ahead_kb,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not os.path.isdir(config.mountpoint):
        raise UserError(f"{args.mountpoint}: not a directory")
    return config


def _memfs(args: argparse.Namespace) -> MemFs:
    from fs.memfs import MemFs, MemFsCore
    from fs.types import ROOT_CRED, ROOT_INODE

    core = MemFsCore(time.time_ns, capacity=args.memfs_capacity)
    for spec in args.memfs_populate:
        name, _, count = spec.partition("=")
        if not name or not count.isdigit() or "/" in name:
            raise UserError(f"--memfs-populate wants NAME=N, not {spec!r}")
        directory = core.mkdir(ROOT_INODE, name.encode(), 0o755, ROOT_CRED)
        core.populate(directory.inode, b"f", int(count))
    return MemFs(core)


@contextlib.asynccontextmanager
async def _backend(args: argparse.Namespace) -> AsyncIterator[FsApi]:
    """The FsApi to mount, open for as long as the mount is served."""
    if args.backend == "memfs":
        yield _memfs(args)
        return
    from fs.client.config import FsClientConfig
    from fs.client.network import connect
    from fs.types import FsError
    from tools.common import read_secret

    endpoints = tuple(e.strip() for e in (args.meta or "").split(",") if e.strip())
    if not endpoints:
        raise UserError("the cluster backend needs --meta HOST:PORT[,...] (or --config)")
    # The client answers within a little less than the mount's own bound, so
    # its precise error (ETIMEDOUT, EIO) wins over the edge's ETIMEDOUT.
    client_timeout = args.op_timeout * CLIENT_TIMEOUT_SHARE
    try:
        config = FsClientConfig(
            meta_endpoints=endpoints, op_timeout=client_timeout,
            meta_attempt_timeout=min(2.0, client_timeout),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    secret = read_secret(args)
    async with contextlib.AsyncExitStack() as stack:
        try:
            fs = await stack.enter_async_context(connect(config, secret))
        except FsError as exc:
            raise UserError(f"no session with the metadata service at {args.meta}: {exc}") from None
        yield fs


async def _watch_parent(parent: int) -> None:
    import trio

    from fs.fuse.mount import request_unmount

    while os.getppid() == parent:  # bounded by the parent's life
        await trio.sleep(PARENT_POLL_SECONDS)
    log.warning("parent %d exited: unmounting", parent)
    request_unmount()


async def _hang_hooks(fs: MemFs) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async for signum in signals:
            hang = signum == signal.SIGUSR1
            log.warning("test hook: file-system calls %s", "hang" if hang else "resume")
            fs.set_hang(hang)


def _serve(args: argparse.Namespace, ready: Callable[[], None]) -> int:
    """Build everything and serve until unmounted (in this process)."""
    import trio

    from fs.fuse.mount import MountError, serve
    from fs.memfs import MemFs

    config = _configs(args)
    parent = os.getppid()

    async def main() -> str | None:
        """Serve; the reason the mount could not be made, if it could not."""
        failure: str | None = None
        async with _backend(args) as fs:
            try:
                async with trio.open_nursery() as nursery:
                    if args.watch_parent:
                        nursery.start_soon(_watch_parent, parent, name="mount-watch-parent")
                    if args.memfs_test_hooks and isinstance(fs, MemFs):
                        nursery.start_soon(_hang_hooks, fs, name="mount-test-hooks")
                    await serve(fs, config, ready=ready)
                    nursery.cancel_scope.cancel()
            except* MountError as failed:  # the nursery wraps it in a group
                failure = str(failed.exceptions[0])
        return failure

    failure = trio.run(main)
    if failure is not None:
        raise UserError(failure)
    return 0


def _log_to(path: str | None) -> None:
    if path is None:
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s ddfs-mount[%(process)d] %(levelname)s %(name)s: %(message)s"
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(root.level, logging.INFO))


def _daemon(args: argparse.Namespace) -> int:
    """Fork; the child serves detached, the parent returns once the mount is usable."""
    _configs(args)  # report bad options here, before forking
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message.startswith("ready"):
            print(f"mounted at {args.mountpoint}", flush=True)
            return 0
        os.waitpid(child, 0)
        raise UserError(message.removeprefix("error: ").strip() or "the mount process died")
    os.close(read_end)
    os._exit(_detached_child(args, write_end))


def _detached_child(args: argparse.Namespace, report_fd: int) -> int:
    """The serving side of `_daemon`: reports "ready" or "error: ..." on `report_fd`."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    _log_to(args.log_file)
    reported = False

    def report(message: bytes) -> None:
        nonlocal reported
        if not reported:
            reported = True
            os.write(report_fd, message)
            os.close(report_fd)

    try:
        return _serve(args, lambda: report(b"ready\n"))
    except UserError as exc:
        report(f"error: {exc}".encode())
    except BaseException:
        log.exception("the mount process failed")
        report(b"error: the mount process failed (see --log-file)")
    return 1


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        from tools import clusterconf

        clusterconf.fill_mount_args(args)
        args.secret_file = Path(args.secret_file) if args.secret_file else None
    if args.watch_parent and not args.foreground:
        raise UserError("--watch-parent needs --foreground (a detached mount has no parent)")
    if not args.foreground:
        return _daemon(args)
    _log_to(args.log_file)

    def ready() -> None:
        print(f"mounted at {args.mountpoint}", flush=True)

    return _serve(args, ready)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.mount", description="mount a ddfs file system with FUSE"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s ddfs-mount[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except UserError as exc:
        print(f"ddfs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
