"""GFS record append on a real cluster (3 `ddfs meta` + 3 `ddfs chunk`
processes): several clients append framed records to one file at once,
across a chunk boundary, while a chunk server is SIGKILLed.

What must hold (the GFS guarantee, docs/chunk-server.md): every append that
returned an offset left its record intact at that offset, on every replica
the chunk map lists; acknowledged records never overlap; everything else in
the file is zeros (padding, aborted appends) or whole records (an append
retried after a lost reply may leave a duplicate); a chunk too full for a
record is padded and the record goes to the next chunk.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import trio

from fs.chunk.protocol import MAX_RECORD
from fs.client import NetworkFs
from fs.types import CHUNK_SIZE, ROOT_CRED, ROOT_INODE, FsError, InodeId
from tests.integration.test_write_faults import fsck_clean, ready, replicas_identical
from tests.support.fs_cluster import fs_cluster

MiB = 1 << 20
HEADER = struct.Struct("<4sHIII")  # magic, writer, sequence number, length, crc32
MAGIC = b"REC!"
WRITERS = 3
PER_WRITER = 26 * MiB  # 78 MiB in all: the file crosses the first chunk boundary


def record(writer: int, seq: int, rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(100_000, 1_100_000))
    return HEADER.pack(MAGIC, writer, seq, len(body), zlib.crc32(body)) + body


def parse(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(writer, seq, total length) of a whole, intact record at `at`, else None."""
    if at + HEADER.size > len(data):
        return None
    magic, writer, seq, length, crc = HEADER.unpack_from(data, at)
    body = data[at + HEADER.size:at + HEADER.size + length]
    if magic != MAGIC or len(body) != length or zlib.crc32(body) != crc:
        return None
    return writer, seq, HEADER.size + length


async def appender(fs: NetworkFs, inode: InodeId, writer: int,
                   acked: dict[tuple[int, int], int], progress: list[int]) -> None:
    rng = random.Random(writer)
    fh = await fs.open(inode, os.O_WRONLY, ROOT_CRED)
    try:
        seq, sent = 0, 0
        while sent < PER_WRITER:
            rec = record(writer, seq, rng)
            acked[(writer, seq)] = await fs.record_append(fh, rec)
            seq, sent = seq + 1, sent + len(rec)
            progress[0] += len(rec)
    finally:
        await fs.release(fh)


async def read_all(fs: NetworkFs, inode: InodeId) -> bytes:
    size = (await fs.getattr(inode, ROOT_CRED)).size
    fh = await fs.open(inode, os.O_RDONLY, ROOT_CRED)
    try:
        return b"".join([await fs.read(fh, o, 8 * MiB) for o in range(0, size, 8 * MiB)])
    finally:
        await fs.release(fh)


def scan(data: bytes) -> list[tuple[int, int, int]]:
    """Every record in the file, in order: (offset, writer, seq); asserts the
    bytes between records are zeros."""
    arr = np.frombuffer(data, dtype=np.uint8)
    found, at = [], 0
    while at < len(data):
        nonzero = np.flatnonzero(arr[at:at + 4 * MiB])
        if nonzero.size == 0:
            at += 4 * MiB
            continue
        at += int(nonzero[0])
        rec = parse(data, at)
        assert rec is not None, f"bytes at {at} are neither zeros nor a whole record"
        found.append((at, rec[0], rec[1]))
        at += rec[2]
    return found


async def test_concurrent_record_appends_survive_a_chunk_server_kill(tmp_path: Path) -> None:
    with fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        acked: dict[tuple[int, int], int] = {}
        progress = [0]
        async with cluster.connect(op_timeout=60.0) as fs:
            fh, attr = await fs.create(ROOT_INODE, b"log", 0o644, os.O_CREAT | os.O_RDWR,
                                       ROOT_CRED)
            await fs.release(fh)
            clients = [cluster.connect(op_timeout=60.0) for _ in range(WRITERS)]
            opened = [await c.__aenter__() for c in clients]
            try:
                async with trio.open_nursery() as nursery:
                    for w, client in enumerate(opened):
                        nursery.start_soon(appender, client, attr.inode, w, acked, progress)
                    with trio.fail_after(300):
                        while progress[0] < 0.4 * WRITERS * PER_WRITER:
                            await trio.sleep(0.05)
                    cluster.chunks[2].kill()
            finally:
                for c in reversed(clients):
                    await c.__aexit__(None, None, None)
        async with cluster.connect(op_timeout=60.0) as fs:  # a fresh client
            data = await read_all(fs, attr.inode)
            assert len(data) > CHUNK_SIZE  # the appends crossed into a second chunk
            found = scan(data)
            for (writer, seq), offset in acked.items():
                assert parse(data, offset) is not None, f"record {writer}/{seq} at {offset}"
                assert HEADER.unpack_from(data, offset)[1:3] == (writer, seq)
            spans = sorted((o, o + HEADER.size + HEADER.unpack_from(data, o)[3])
                           for o in acked.values())
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "records overlap"
            assert not any(s < CHUNK_SIZE < e for s, e in spans), "a record spans two chunks"
            # Every record in the file was appended by a writer (duplicates allowed).
            assert {(w, s) for _, w, s in found} == set(acked)
            await replicas_identical(cluster, fs, attr.inode, data)
        await fsck_clean(cluster)


async def test_record_append_refuses_empty_and_oversized_records(tmp_path: Path) -> None:
    with fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        async with cluster.connect(op_timeout=30.0) as fs:
            fh, _ = await fs.create(ROOT_INODE, b"f", 0o644, os.O_CREAT | os.O_RDWR, ROOT_CRED)
            try:
                for bad in (b"", bytes(MAX_RECORD + 1)):
                    with pytest.raises(FsError) as info:
                        await fs.record_append(fh, bad)
                    assert info.value.errno == errno.EINVAL
                # A plain write first: appends go after it, never over it.
                await fs.write(fh, 0, b"x" * 1000)
                assert await fs.record_append(fh, b"abc") == 1000
                assert await fs.record_append(fh, b"defg") == 1003
                assert await fs.read(fh, 0, 2000) == b"x" * 1000 + b"abcdefg"
            finally:
                await fs.release(fh)
