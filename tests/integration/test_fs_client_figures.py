"""The figures docs/fs-client.md reports: sequential write and read of a 256 MiB
file through NetworkFs directly (no FUSE) on a 3 + 3 loopback cluster.

Not a timing assertion (the machine is shared): it checks every byte and
prints the rates.  Run with `pytest --soak -s tests/integration/test_fs_client_figures.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from fs.types import ROOT_CRED, ROOT_INODE
from tests.support.fs_cluster import fs_cluster

MiB = 1 << 20
SIZE = 256 * MiB
STEP = MiB


@pytest.mark.soak
async def test_sequential_write_and_read_rates(tmp_path: Path) -> None:
    block = os.urandom(STEP)
    with fs_cluster(tmp_path) as cluster:
        async with cluster.client() as rpc:
            await cluster.wait_ready(rpc)
        async with cluster.connect(op_timeout=60.0) as fs:
            fh, attr = await fs.create(ROOT_INODE, b"big", 0o644, os.O_CREAT | os.O_RDWR,
                                       ROOT_CRED)
            start = trio.current_time()
            for offset in range(0, SIZE, STEP):
                await fs.write(fh, offset, block)
            await fs.flush(fh)
            write_s = trio.current_time() - start
            await fs.release(fh)
        async with cluster.connect(op_timeout=60.0) as fs:  # cold caches
            fh = await fs.open(attr.inode, os.O_RDONLY, ROOT_CRED)
            start = trio.current_time()
            for offset in range(0, SIZE, STEP):
                assert await fs.read(fh, offset, STEP) == block
            read_s = trio.current_time() - start
            await fs.release(fh)
    print(f"\nNetworkFs, 256 MiB sequential: write {SIZE / write_s / 1e6:.1f} MB/s, "
          f"read {SIZE / read_s / 1e6:.1f} MB/s")
