"""Faults during writes, on a real cluster (3 `ddfs meta` + 3 `ddfs chunk`
processes on loopback) written through NetworkFs or a FUSE mount:

* each chunk server in turn SIGKILLed in the middle of a 200 MiB write
  (1 GiB with --soak) that crosses 3 chunk boundaries;
* the metadata leader SIGKILLed in the middle of `cp -r` of a tree (a 200 MiB
  file and 48 small ones) into a real FUSE mount of the cluster;
* a chunk server's disk full (a small tmpfs): ENOSPC reaches the writer, no
  chunk is damaged, and the space is usable again once freed;
* a client SIGKILLed in the middle of its writes: its session ends, its
  orphan is reclaimed, nobody else is affected.

While a file is written (and while the tree is copied) another client reads
random ranges of it and checks every byte against what was written or zero
(tests/support/readers.py): no read returns bytes that were never written.
Afterwards every file whose close returned 0 reads back byte-identical from a
fresh client, every replica the chunk map lists holds exactly the file's
bytes (read from each replica separately), and `fsck` finds nothing: the
chunk maps of chunks written during a kill keep fewer than 3 replicas, which
fsck reports as under-replicated until re-replication exists (issue 6, a
later item); that one finding is expected and excluded, every other is not.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from coord.kv.commands import EndSession, encode_body
from coord.kv.remote import LeaderRouter
from coord.kv.types import ClientId
from fs.chunk import protocol as cp
from fs.client import NetworkFs
from fs.fsck import Kind
from fs.meta.protocol import FsSubmit
from fs.types import CHUNK_SIZE, ROOT_CRED, ROOT_INODE, FsError, InodeId
from tests.fuse.cluster_support import cluster_mount
from tests.support.fs_cluster import FsCluster, fs_cluster
from tests.support.processes import Proc
from tests.support.readers import ReadCheck, read_while_written
from tools.fsck import FsckTarget, check_cluster

MiB = 1 << 20
R = ROOT_CRED
CREAT = os.O_CREAT | os.O_RDWR | os.O_EXCL
STEP = MiB  # bytes per write call
READ_STEP = 8 * MiB


def file_size(soak: bool) -> int:
    size = 1024 * MiB if soak else 200 * MiB
    assert size > 3 * CHUNK_SIZE  # crosses at least 3 chunk boundaries
    return size


def payload(seed: int, size: int) -> bytes:
    """The content of one test file, regenerated for every comparison."""
    return np.random.default_rng(seed).bytes(size)


async def ready(cluster: FsCluster) -> None:
    async with cluster.client() as rpc:
        await cluster.wait_ready(rpc, timeout=60)


async def write_file(fs: NetworkFs, parent: InodeId, name: bytes, data: bytes,
                     progress: Callable[[int], None] | None = None,
                     created: Callable[[InodeId], None] | None = None) -> InodeId:
    """create, write in STEP pieces, release (close): returns once close returned 0."""
    fh, attr = await fs.create(parent, name, 0o644, CREAT, R)
    if created is not None:
        created(attr.inode)
    for offset in range(0, len(data), STEP):
        await fs.write(fh, offset, data[offset:offset + STEP])
        if progress is not None:
            progress(offset + STEP)
    await fs.release(fh)
    return attr.inode


async def read_back(fs: NetworkFs, inode: InodeId, data: bytes) -> None:
    assert (await fs.getattr(inode, R)).size == len(data)
    fh = await fs.open(inode, os.O_RDONLY, R)
    try:
        for offset in range(0, len(data), READ_STEP):
            got = await fs.read(fh, offset, READ_STEP)
            assert got == data[offset:offset + READ_STEP], f"inode {inode} at {offset}"
        assert await fs.read(fh, len(data), 10) == b""
    finally:
        await fs.release(fh)


async def replicas_identical(cluster: FsCluster, fs: NetworkFs, inode: InodeId,
                             data: bytes) -> int:
    """Every replica the map lists holds exactly the file's bytes at the map's
    version (read from each replica on its own); returns the replicas checked."""
    chunks = -(-len(data) // CHUNK_SIZE)
    locations = await fs.meta.chunk_locations(inode, 0, chunks)
    assert [loc.index for loc in locations] == list(range(chunks))
    checked = 0
    async with cluster.client() as rpc:
        for loc in locations:
            extent = data[loc.index * CHUNK_SIZE:(loc.index + 1) * CHUNK_SIZE]
            assert loc.replicas, f"chunk {loc.index} of inode {inode} has no replica"
            for server, address in loc.replicas:
                for offset in range(0, len(extent), READ_STEP):
                    reply = await rpc.call(address, cp.ChunkRead(
                        loc.handle, loc.version, offset, READ_STEP), timeout=30)
                    want = extent[offset:offset + READ_STEP]
                    assert reply.data == want[:len(reply.data)], \
                        f"chunk {loc.handle} on server {server} differs at {offset}"
                    assert not any(want[len(reply.data):]), "a replica is short"
                checksum = await rpc.call(address, cp.ChunkChecksum(loc.handle), timeout=60)
                assert checksum.bad_blocks == [] and checksum.version == loc.version
                checked += 1
    return checked


async def fsck_clean(cluster: FsCluster) -> None:
    target = FsckTarget(
        endpoints=tuple(cluster.endpoints), secret=cluster.secret, replicas=3,
        meta_data={i: cluster.base / f"meta{i}" for i in cluster.meta.ids},
        chunk_data={i: cluster.base / f"chunk{i}" for i in cluster.chunks},
        chunk_addresses=dict(cluster.chunk_addresses))
    outcome = await check_cluster(target, verify_checksums=True)
    # Chunks written while a server was down keep 2 replicas: no re-replication yet.
    problems = [p for p in outcome.report.problems if p.kind is not Kind.UNDER_REPLICATED]
    assert problems == [], "\n".join(map(str, problems))


async def restart_chunk_server(cluster: FsCluster, server: int) -> None:
    cluster.chunks[server].launch("ready on")
    await ready(cluster)


async def kill_when(reached: trio.Event, kill: Callable[[], None],
                    killed: list[bool]) -> None:
    await reached.wait()
    kill()
    killed.append(True)


# ---- chunk servers --------------------------------------------------------------------


async def test_each_chunk_server_killed_in_turn_during_a_write(
        tmp_path: Path, soak: bool) -> None:
    size = file_size(soak)
    with fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        inodes: dict[int, InodeId] = {}
        async with cluster.connect(op_timeout=60.0) as fs, \
                cluster.connect(op_timeout=20.0) as reader:
            for victim in cluster.chunks:
                drops = fs.io.drops
                check = ReadCheck()
                inodes[victim] = await _write_while_killing(
                    fs, b"f%d" % victim, payload(victim, size),
                    cluster.chunks[victim].kill, reader, check)
                assert fs.io.drops > drops  # the dead server was reported
                # Readers saw real data during the write, and nothing else (checked per read).
                assert check.reads > 0 and check.nonzero_checked > 0, check
                await restart_chunk_server(cluster, victim)
        async with cluster.connect(op_timeout=60.0) as fs:  # a fresh client
            for victim, inode in inodes.items():
                data = payload(victim, size)
                await read_back(fs, inode, data)
                assert await replicas_identical(cluster, fs, inode, data) >= 2 * (
                    -(-size // CHUNK_SIZE))
        await fsck_clean(cluster)


async def _write_while_killing(fs: NetworkFs, name: bytes, data: bytes,
                               kill: Callable[[], None], reader: NetworkFs,
                               check: ReadCheck) -> InodeId:
    """Write `data` to a new file, running `kill` once 40% of it was handed over,
    while another client reads the file and checks every byte it gets."""
    reached, killed, done = trio.Event(), list[bool](), trio.Event()
    inode: list[InodeId] = []
    target: list[tuple[InodeId, bytes]] = []

    def progress(written: int) -> None:
        if written >= 0.4 * len(data):
            reached.set()

    async def writer() -> None:
        try:
            inode.append(await write_file(fs, ROOT_INODE, name, data, progress,
                                          created=lambda i: target.append((i, data))))
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill_when, reached, kill, killed)
        nursery.start_soon(read_while_written, reader,
                           lambda rng: target[0] if target else None, done, check)
        nursery.start_soon(writer)
    assert killed  # during the write: the release came after the kill
    return inode[0]


# ---- the metadata leader ----------------------------------------------------------------


def tree() -> dict[bytes, dict[bytes, int]]:
    """A source tree: directory -> file name -> seed; the seed 0 file is big."""
    out: dict[bytes, dict[bytes, int]] = {b"big": {b"data.bin": 0}}
    seed = 1
    for d in range(4):
        files = {}
        for k in range(12):
            files[b"file%02d" % k] = seed
            seed += 1
        out[b"dir%d" % d] = files
    return out


def tree_payload(seed: int, big: int) -> bytes:
    return payload(1000 + seed, big if seed == 0 else random.Random(seed).randrange(1, 600_000))


async def test_metadata_leader_killed_during_cp_r_through_a_mount(
        tmp_path: Path, soak: bool) -> None:
    """`cp -r` of a tree into a real mount; the leader SIGKILLed at 30 % of the bytes."""
    big = file_size(soak)
    source = tree()
    src = _write_source(tmp_path / "src", source, big)
    total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    (tmp_path / "cluster").mkdir()
    with fs_cluster(tmp_path / "cluster") as cluster:
        await ready(cluster)
        async with cluster.client() as rpc:
            leader = await cluster.meta.wait_leader(rpc)
        check = ReadCheck()
        with cluster_mount(cluster, "--op-timeout", "60",
                           allowed_warnings=FAILOVER_WARNINGS) as mount:
            async with cluster.connect(op_timeout=20.0) as reader:
                status = await _cp_killing(
                    ["cp", "-r", str(src), str(mount.mountpoint / "copy")],
                    0.3 * total, cluster.meta.members[leader].kill,
                    _TreeReader(reader, source, big, check))
            assert status == 0, mount.log_text()[-3000:]
            assert not cluster.meta.members[leader].running
        # Readers saw real data during the copy, and nothing else (checked per read).
        assert check.reads > 0 and check.nonzero_checked > 0, check
        cluster.meta.start(leader)
        await ready(cluster)
        async with cluster.connect(op_timeout=60.0) as fs:
            top = (await fs.lookup(ROOT_INODE, b"copy", R)).inode
            await _same_tree(cluster, fs, top, source, big)
        await fsck_clean(cluster)


# A mount logs its retries while the metadata leader is being replaced.
FAILOVER_WARNINGS = ("keeping the metadata session alive failed",)


def _write_source(src: Path, source: dict[bytes, dict[bytes, int]], big: int) -> Path:
    for dirname, files in source.items():
        (src / dirname.decode()).mkdir(parents=True)
        for name, seed in files.items():
            (src / dirname.decode() / name.decode()).write_bytes(tree_payload(seed, big))
    return src


def _bytes_written(pid: int) -> int:
    """What a process has written so far (`wchar` of /proc/PID/io)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


async def _cp_killing(argv: list[str], at: float, kill: Callable[[], None],
                      readers: _TreeReader) -> int:
    """Run `argv`; call `kill` once it has written `at` bytes; return its exit status."""
    proc = await trio.lowlevel.open_process(argv)
    killed = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(readers.run)
            with trio.fail_after(600):
                while proc.poll() is None:
                    if not killed and _bytes_written(proc.pid) >= at:
                        kill()
                        killed = True
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert killed, "the copy finished before the kill"
        return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class _TreeReader:
    """Another client that, while the tree is copied, keeps finding the files
    already created in it and reading random ranges of them (tests/support/readers)."""

    def __init__(self, fs: NetworkFs, source: dict[bytes, dict[bytes, int]], big: int,
                 check: ReadCheck) -> None:
        self.fs, self.source, self.big, self.check = fs, source, big, check
        self.found: list[tuple[InodeId, bytes]] = []
        self._seen: set[InodeId] = set()
        self._payloads: dict[int, bytes] = {}

    async def run(self) -> None:
        """Until cancelled (the copy's end cancels it)."""
        stop = trio.Event()  # never set
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_while_written, self.fs,
                               lambda rng: rng.choice(self.found) if self.found else None,
                               stop, self.check)
            for _ in range(100_000):
                await self._discover()
                await trio.sleep(0.3)

    async def _discover(self) -> None:
        try:
            top = (await self.fs.lookup(ROOT_INODE, b"copy", R)).inode
            for d in await self.fs.readdir(top, 0, 1000, R):
                for f in await self.fs.readdir(d.attr.inode, 0, 1000, R):
                    if f.attr.inode not in self._seen:
                        self._seen.add(f.attr.inode)
                        seed = self.source[d.name][f.name]
                        data = self._payloads.setdefault(seed, tree_payload(seed, self.big))
                        self.found.append((f.attr.inode, data))
        except FsError as exc:  # ENOENT before cp made it; timeouts during the failover
            self.check.errors.append(f"discover: {exc}")


async def _same_tree(cluster: FsCluster, fs: NetworkFs, top: InodeId,
                     source: dict[bytes, dict[bytes, int]], big: int) -> None:
    entries = await fs.readdir(top, 0, 1000, R)
    assert sorted(e.name for e in entries) == sorted(source)  # none missing, none twice
    for e in entries:
        files = await fs.readdir(e.attr.inode, 0, 1000, R)
        assert sorted(f.name for f in files) == sorted(source[e.name])
        for f in files:
            data = tree_payload(source[e.name][f.name], big)
            await read_back(fs, f.attr.inode, data)
            if len(data) > CHUNK_SIZE:
                await replicas_identical(cluster, fs, f.attr.inode, data)


# ---- a full disk ------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                           str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int) -> Path:
    """Take all but about `leave` bytes of the file system of `path`."""
    filler = path / "filler"
    st = os.statvfs(path)
    with open(filler, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, max(0, st.f_bavail * st.f_frsize - leave))
    return filler


async def test_a_full_disk_reaches_the_writer_and_freed_space_is_usable(
        tmp_path: Path) -> None:
    data = payload(77, 48 * MiB)
    with tmpfs(tmp_path / "chunk3", 128) as small, fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        async with cluster.connect(op_timeout=60.0) as fs:
            first = payload(78, 3 * MiB)
            kept = await write_file(fs, ROOT_INODE, b"before", first)
            filler = fill(small, leave=6 * MiB)
            fh, attr = await fs.create(ROOT_INODE, b"big", 0o644, CREAT, R)
            with pytest.raises(FsError) as info:
                for offset in range(0, len(data), STEP):
                    await fs.write(fh, offset, data[offset:offset + STEP])
                await fs.fsync(fh, False)
            assert info.value.errno == errno.ENOSPC
            await _release_reporting(fs.release(fh))
            size = (await fs.getattr(attr.inode, R)).size
            # Nothing half-written: what the file has, every replica has.
            await replicas_identical_prefix(cluster, fs, attr.inode, data[:size])
            await read_back(fs, kept, first)
            filler.unlink()  # space freed: usable again at once
            fh = await fs.open(attr.inode, os.O_RDWR, R)
            for offset in range(0, len(data), STEP):
                await fs.write(fh, offset, data[offset:offset + STEP])
            await fs.fsync(fh, False)
            await fs.release(fh)
        async with cluster.connect(op_timeout=60.0) as fs:
            await read_back(fs, attr.inode, data)
            await replicas_identical(cluster, fs, attr.inode, data)
        await fsck_clean(cluster)
        cluster.close()  # before the tmpfs goes


async def _release_reporting(call: Awaitable[None]) -> None:
    """close(2) of a file whose data failed: the error may be reported here again."""
    try:
        await call
    except FsError as exc:
        assert exc.errno == errno.ENOSPC


async def replicas_identical_prefix(cluster: FsCluster, fs: NetworkFs, inode: InodeId,
                                    data: bytes) -> None:
    if data:
        await replicas_identical(cluster, fs, inode, data)


# ---- a client -------------------------------------------------------------------------------

CHILD = r"""
import os, sys, trio
from fs.client import FsClientConfig, connect
from fs.types import ROOT_CRED as R, ROOT_INODE

async def main() -> None:
    config = FsClientConfig(meta_endpoints=tuple(sys.argv[1].split(",")), op_timeout=30.0,
                            local_hosts=("127.0.0.1",))
    secret = open(sys.argv[2], "rb").read().strip()
    async with connect(config, secret) as fs:
        fh, attr = await fs.create(ROOT_INODE, b"victim", 0o644, os.O_CREAT | os.O_RDWR, R)
        ofh, orphan = await fs.create(ROOT_INODE, b"orphan", 0o644, os.O_CREAT | os.O_RDWR, R)
        await fs.write(ofh, 0, b"o" * 100_000)
        await fs.flush(ofh)
        await fs.unlink(ROOT_INODE, b"orphan", R)
        print(f"session {fs.meta.client_id} victim {attr.inode} orphan {orphan.inode}",
              flush=True)
        block = os.urandom(1 << 20)
        n = 0
        while True:
            await fs.write(fh, n << 20, block)
            n += 1
            if n % 8 == 0:
                await fs.flush(fh)
                print(f"flushed {n}", flush=True)

trio.run(main)
"""


async def end_session(cluster: FsCluster, client_id: int) -> None:
    """End a client's session as its expiry does (the same state-machine path)."""
    body = encode_body(EndSession(ClientId(client_id)))
    router = LeaderRouter(cluster.endpoints, timeout=20.0)
    async with cluster.client() as rpc:
        await router.call(lambda address: rpc.call(address, FsSubmit(body), timeout=2.0))


async def test_a_client_killed_mid_write_affects_nobody_else(tmp_path: Path) -> None:
    with fs_cluster(tmp_path) as cluster:
        await ready(cluster)
        child = cluster.group.add(Proc(
            "client", [sys.executable, "-c", CHILD, ",".join(cluster.endpoints),
                       str(cluster.secret_file)], tmp_path / "client.log"))
        child.launch("flushed 24", timeout=60)
        ids = child.log_text().split("\n")[0].split()
        client_id, victim, orphan = int(ids[1]), InodeId(int(ids[3])), InodeId(int(ids[5]))
        other = payload(5, 40 * MiB)
        async with cluster.connect(op_timeout=60.0) as fs:
            reached, killed = trio.Event(), list[bool]()

            def progress(done: int) -> None:
                if done >= 10 * MiB:
                    reached.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_when, reached, lambda: child.signal(signal.SIGKILL),
                                   killed)
                bystander = await write_file(fs, ROOT_INODE, b"bystander", other, progress)
            child.kill()  # reaped
            assert killed
            assert (await fs.getattr(orphan, R)).nlink == 0  # still held by its session
            await end_session(cluster, client_id)
            with pytest.raises(FsError) as info:
                await fs.getattr(orphan, R)
            assert info.value.errno == errno.ENOENT  # reclaimed
            size = (await fs.getattr(victim, R)).size
            assert size >= 24 * MiB and size % MiB == 0
            await _consistent(cluster, fs, victim, size)
            await read_back(fs, bystander, other)
            await replicas_identical(cluster, fs, bystander, other)
        await fsck_clean(cluster)


async def _consistent(cluster: FsCluster, fs: NetworkFs, inode: InodeId, size: int) -> None:
    """The dead client's file: readable to its size, every replica the same."""
    fh = await fs.open(inode, os.O_RDONLY, R)
    try:
        data = b"".join([await fs.read(fh, o, READ_STEP) for o in range(0, size, READ_STEP)])
    finally:
        await fs.release(fh)
    assert len(data) == size
    block = data[:MiB]
    assert data == block * (size // MiB)  # the child wrote one block again and again
    await replicas_identical(cluster, fs, inode, data)
