"""Determinism: replicas fed the same entries end identical, whatever the store
(twin or LMDB), the batching of apply calls, or a crash and restart midway.

A seeded random workload of FS commands from several sessions (with many
refusals, renames over open files, chunk operations, leader commands and
session expiry) is generated against a reference replica, then replayed.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from coord.kv.commands import ClientRequest, ExtCommand, LeaderCommand, stamp
from coord.kv.machine import Applied
from coord.kv.results import ErrorCode, ErrorResult, ExtResult, RegisterResult
from coord.kv.store import KVStore
from coord.kv.types import ClientId, SeqNo
from coord.raft.types import Entry
from fs.meta import commands as c
from fs.meta.machine import memory_meta_store, meta_machine, open_meta_store
from fs.meta.protocol import FS_SPACE
from fs.meta.results import AttrResult, ChunkResult, decode_result
from fs.types import ChunkHandle, InodeId, ServerId, SetAttrFields
from tests.unit.test_fs_meta_support import ALICE, BOB, CAROL, KV, MAP_SIZE, ROOT, TTL, FsHarness

CREDS = [ROOT, ROOT, ALICE, BOB, CAROL]
NAMES = [b"a", b"b", b"c", b"d"]
SERVERS = tuple(ServerId(i) for i in (1, 2, 3, 4))


class Workload:
    """Random commands that are plausible often enough to exercise every path."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.h = FsHarness(memory_meta_store())
        self.dirs: list[int] = [1]
        self.files: list[int] = []
        self.handles: list[int] = []
        self.sessions: dict[ClientId, int] = {}  # client -> last seq

    def _register(self) -> None:
        result = self.h.apply(self.h.log.register()).result
        assert isinstance(result, RegisterResult)
        self.sessions[result.client_id] = 0

    def _send(self, command: c.FsCommand, cid: ClientId | None = None) -> None:
        cid = self.rng.choice(sorted(self.sessions)) if cid is None else cid
        seq = self.sessions[cid] + 1
        self.sessions[cid] = seq
        ext = ExtCommand(FS_SPACE, c.encode_command(command))
        applied = self.h.apply(self.h.log.body(ClientRequest(cid, SeqNo(seq), SeqNo(seq - 1), ext)))
        if not isinstance(applied.result, ExtResult):
            del self.sessions[cid]  # expired: forget it
            return
        result = decode_result(applied.result.payload)
        if isinstance(result, AttrResult):
            target = self.dirs if stat.S_ISDIR(result.attr.mode) else self.files
            if result.attr.inode not in target:
                target.append(result.attr.inode)
            if isinstance(command, c.Create | c.Open) and self.rng.random() < 0.5:
                # Writes follow opens: the chunk commands need the file open in the session.
                ino, index = result.attr.inode, self.rng.randint(0, 3)
                self._send(c.AllocChunk(ino, index, SERVERS[:3]), cid)
                if cid in self.sessions:
                    self._send(c.AcquireLease(ino, index, SERVERS[1:]), cid)
        elif isinstance(result, ChunkResult):
            self.handles.append(result.location.handle)

    def _command(self) -> c.FsCommand:
        rng, cred = self.rng, self.rng.choice(CREDS)
        d, n = InodeId(rng.choice(self.dirs)), rng.choice(NAMES)
        f = InodeId(rng.choice(self.files or [1]))
        choices: list[c.FsCommand] = [
            c.Mkdir(d, n, rng.choice([0o755, 0o777, 0o1777]), cred),
            c.Create(d, n, 0o644, rng.choice([os.O_RDWR, os.O_RDWR | os.O_EXCL]), cred),
            c.Mknod(d, n, stat.S_IFIFO | 0o600, 0, cred),
            c.Symlink(d, n, b"t" * rng.randint(0, 3), cred),
            c.Link(f, d, n, cred),
            c.Unlink(d, n, cred),
            c.Rmdir(d, n, cred),
            c.Rename(d, n, InodeId(rng.choice(self.dirs)), rng.choice(NAMES),
                     rng.choice([0, 0, 1, 2]), cred),
            c.SetAttr(f, SetAttrFields(mode=rng.choice([0o644, 0o6755]),
                                       size=rng.choice([None, 0, 10**8])), cred),
            c.SetXattr(f, b"user." + n, n, rng.choice([0, 1, 2]), cred),
            c.RemoveXattr(f, b"user." + n, cred),
            c.Open(f, os.O_RDWR, cred),
            c.Release(f),
            c.AllocChunk(f, rng.randint(0, 3), tuple(rng.sample(SERVERS, rng.randint(0, 3)))),
            c.AcquireLease(f, rng.randint(0, 3), tuple(rng.sample(SERVERS, 2))),
            c.DropReplica(ChunkHandle(rng.choice(self.handles or [1])), rng.choice(SERVERS)),
            c.SetSize(f, rng.randint(0, 3 * 64 << 20), rng.random() < 0.3, cred),
        ]
        return rng.choice(choices)

    def run(self, steps: int) -> list[Entry]:
        for sid in SERVERS:
            self.h.leader(c.ServerState(sid, f"h:{sid}", 1 << 40, 1 << 39, True))
        for _ in range(steps):
            roll = self.rng.random()
            if roll < 0.03 or not self.sessions:
                self._register()
            elif roll < 0.05:
                self.h.advance(self.rng.choice([1, TTL // 2, TTL + 1]))
            elif roll < 0.06:
                live = c.ServerState(ServerId(2), "h:2", 1 << 40, 1 << 38, self.rng.random() < 0.5)
                data = stamp(LeaderCommand(ExtCommand(FS_SPACE, c.encode_command(live))),
                             self.h.log.now)
                self.h.apply(self.h.log.raw(data))
            elif roll < 0.07:
                self.h.apply(self.h.log.noop())
            else:
                self._send(self._command())
        return self.h.log.entries


def _replay(store: KVStore, entries: list[Entry], rng: random.Random | None) -> list[Applied]:
    machine = meta_machine(store, KV)
    out: list[Applied] = []
    i = 0
    while i < len(entries):
        n = 1 if rng is None else rng.randint(1, 40)
        out.extend(machine.apply(entries[i : i + n]))
        i += n
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replicas_fed_the_same_entries_end_identical(seed: int, tmp_path: Path) -> None:
    work = Workload(seed)
    entries = work.run(1500)
    assert len(work.files) > 5 and len(work.dirs) > 3 and work.handles  # it did things
    assert work.h.fsck() == []
    reference = work.h.fs_state()
    twin = memory_meta_store()
    one_by_one = _replay(twin, entries, None)
    with open_meta_store(tmp_path / "a", MAP_SIZE) as lmdb_store:
        batched = _replay(lmdb_store, entries, random.Random(seed))
        with lmdb_store.reader() as view, twin.reader() as twin_view:
            assert view.dump() == twin_view.dump()  # KV sessions, replies and FS tables
    assert one_by_one == batched
    with twin.reader() as view:
        assert view.dump().tables == reference


def test_a_crash_midway_replays_to_the_same_state(tmp_path: Path) -> None:
    entries = Workload(7).run(400)
    half = len(entries) // 2
    path = tmp_path / "crash"
    with open_meta_store(path, MAP_SIZE) as store:
        _replay(store, entries[:half], random.Random(1))
    with open_meta_store(path, MAP_SIZE) as store:  # the process restarts
        machine = meta_machine(store, KV)
        assert machine.applied_index == entries[half - 1].index
        machine.apply(entries[half:])
        with store.reader() as view:
            restarted = view.dump()
    clean = memory_meta_store()
    _replay(clean, entries, None)
    with clean.reader() as view:
        assert view.dump() == restarted


def test_a_bad_extension_payload_is_bad_command_on_every_replica() -> None:
    h = FsHarness(memory_meta_store())
    cid = h.session().cid
    junk = ClientRequest(cid, SeqNo(1), SeqNo(0), ExtCommand(FS_SPACE, b"\x93junk"))
    result = h.apply(h.log.body(junk)).result
    assert isinstance(result, ErrorResult) and result.code is ErrorCode.BAD_COMMAND
    other = ClientRequest(cid, SeqNo(2), SeqNo(1), ExtCommand(99, b""))
    result = h.apply(h.log.body(other)).result
    assert isinstance(result, ErrorResult) and result.code is ErrorCode.BAD_COMMAND
