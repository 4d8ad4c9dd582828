"""Readers that run *while* files are being written and check every byte they see.

The property (issue 6): no read during a fault test returns bytes that were
never written.  A byte a concurrent reader sees at offset i of a file is
either the byte the writer wrote there (`expected[i]`) or zero (a hole: the
writer has not reached it yet, or the size grew before the data did on the
replica read).  Anything else — stale bytes of another file, a half-applied
mutation, garbage from a torn replica — fails the test at once.

A reader is a separate client (its own session and caches), so what it sees
comes from the chunk servers, not from the writer's buffers.  Errors (EIO,
ETIMEDOUT while a server is being killed) are allowed: a clear error is not
wrong data.  The loops are bounded by `stop` and by `max_reads`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from fs.client import NetworkFs
from fs.types import ROOT_CRED, FsError, InodeId

READ_SIZE = 4 << 20


@dataclass
class ReadCheck:
    """What concurrent readers saw: bytes checked against the writer's data."""

    reads: int = 0
    bytes_checked: int = 0
    nonzero_checked: int = 0  # bytes that matched real data (not a hole)
    errors: list[str] = field(default_factory=list)


def check_bytes(got: bytes, expected: bytes, offset: int, what: str) -> int:
    """Raise if any byte is neither the written byte nor zero; the count of data bytes."""
    assert len(got) <= len(expected), f"{what}: read past the written end at {offset}"
    g = np.frombuffer(got, dtype=np.uint8)
    e = np.frombuffer(expected[:len(got)], dtype=np.uint8)
    bad = np.flatnonzero((g != e) & (g != 0))
    assert bad.size == 0, (
        f"{what}: byte {offset + int(bad[0])} read as {int(g[bad[0]])}, "
        f"written {int(e[bad[0]])} ({bad.size} such bytes in this read)")
    return int(np.count_nonzero(g == e))


Target = tuple[InodeId, bytes]  # a file being written and what is written to it


async def read_while_written(
    fs: NetworkFs, pick: Callable[[random.Random], Target | None], stop: trio.Event,
    check: ReadCheck, *, seed: int = 0, max_reads: int = 10_000,
) -> None:
    """Until `stop`: open the file `pick` names, read a random range, check it."""
    rng = random.Random(seed)
    while not stop.is_set() and check.reads < max_reads:
        target = pick(rng)
        if target is None:
            await trio.sleep(0.05)
            continue
        await _one_read(fs, target[0], target[1], rng, check)
        await trio.sleep(0.02)  # leave the writer most of the bandwidth


async def _one_read(fs: NetworkFs, inode: InodeId, data: bytes, rng: random.Random,
                    check: ReadCheck) -> None:
    try:
        fh = await fs.open(inode, os.O_RDONLY, ROOT_CRED)  # close-to-open: fresh size
    except FsError as exc:
        check.errors.append(f"open {inode}: {exc}")
        await trio.sleep(0.1)
        return
    try:
        size = (await fs.getattr(inode, ROOT_CRED)).size
        offset = rng.randrange(0, max(size, 1))
        got = await fs.read(fh, offset, READ_SIZE)
        check.nonzero_checked += check_bytes(got, data[offset:], offset, f"inode {inode}")
        check.bytes_checked += len(got)
        check.reads += 1
    except FsError as exc:
        check.errors.append(f"read {inode}: {exc}")
        await trio.sleep(0.1)
    finally:
        try:
            await fs.release(fh)
        except FsError as exc:
            check.errors.append(f"release {inode}: {exc}")
