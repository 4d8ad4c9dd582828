"""`ddfs append`: GFS record append from the command line.

    ddfs append PATH [--lines] [--create] [--dir D | --config F] [--json] < records

Appends standard input to the ddfs file PATH (a path inside the file
system, e.g. /logs/events) as records: the whole input as one record, or
with `--lines` every line (newline included) as its own record.  Each record
lands atomically at an offset the chunk's primary picks, so any number of
appenders on any hosts can add to one file at once without overwriting each
other (fs/chunk/primary.py: `Primary.append`).  Prints one line per record,
"OFFSET LENGTH" (or one JSON object with `--json`).

At least once: a record whose reply was lost is appended again, and a chunk
too full for a record is padded with zeros; readers frame their records
(with `--lines`, skip NUL bytes and keep lines).  Records are 1 byte to
16 MiB.  The caller's uid, gid and groups are checked against the file's
permissions like a mount's.  Exit status 0 when every record was appended, 1 on a file-system
error (the records printed so far are in the file), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Iterator

from fs.types import ROOT_INODE, Cred, FsError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.cluster import add_target_arguments

    add_target_arguments(parser)
    parser.add_argument("path", help="the file inside ddfs, e.g. /logs/events")
    parser.add_argument("--lines", action="store_true", help="one record per input line")
    parser.add_argument("--create", action="store_true", help="create the file if absent")
    parser.add_argument("--op-timeout", type=float, default=30.0, metavar="S",
                        help="bound on each operation (default 30 s)")
    parser.add_argument("--json", action="store_true", help="one JSON object at the end")


def records(data: bytes, lines: bool) -> Iterator[bytes]:
    if not lines:
        if data:
            yield data
        return
    yield from (line for line in data.splitlines(keepends=True) if line)


def run(args: argparse.Namespace) -> int:
    import trio

    from tools.cli import UserError
    from tools.cluster import load_target
    from tools.clusterconf import read_secret

    parts = [p.encode() for p in args.path.split("/") if p]
    if not args.path.startswith("/") or not parts:
        raise UserError(f"{args.path!r}: give an absolute path to a file inside ddfs")
    _, config = load_target(args)
    try:
        placed = trio.run(_append, config.endpoints, read_secret(config), parts, args)
    except FsError as exc:
        print(f"ddfs append: {args.path}: {os.strerror(exc.errno)} ({exc})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"path": args.path, "records": [
            {"offset": o, "length": n} for o, n in placed]}))
    return 0


async def _append(endpoints: list[str], secret: bytes, parts: list[bytes],
                  args: argparse.Namespace) -> list[tuple[int, int]]:
    import trio

    from fs.client import FsClientConfig, connect

    config = FsClientConfig(meta_endpoints=tuple(endpoints), op_timeout=args.op_timeout)
    placed: list[tuple[int, int]] = []
    # The caller's own identity: the metadata service checks its permissions.
    me = Cred(os.getuid(), os.getgid(), tuple(os.getgroups()), os.getpid())
    async with connect(config, secret) as fs:
        parent = ROOT_INODE
        for name in parts[:-1]:
            parent = (await fs.lookup(parent, name, me)).inode
        try:
            inode = (await fs.lookup(parent, parts[-1], me)).inode
            fh = await fs.open(inode, os.O_WRONLY, me)
        except FsError as exc:
            if exc.errno != errno.ENOENT or not args.create:
                raise
            fh, _ = await fs.create(parent, parts[-1], 0o644, os.O_CREAT | os.O_WRONLY,
                                    me)
        try:
            # Read the input only once the file is open: a wrong path costs no input.
            data = await trio.to_thread.run_sync(sys.stdin.buffer.read)
            for rec in records(data, args.lines):
                offset = await fs.record_append(fh, rec)
                placed.append((offset, len(rec)))
                if not args.json:
                    print(offset, len(rec), flush=True)
        finally:
            await fs.release(fh)
    return placed
