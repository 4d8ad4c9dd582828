"""Shared helpers for the FS state-machine tests (no tests here).

`FsHarness` runs the composite metadata machine (KV + FS) over a store
(twin or LMDB) with a log builder; `Session` is one client session that
sends FS commands in the session envelope and decodes their results, the
way the service and MetaClient do.  `ok`/`fails` make the tests read like
the POSIX rule they check.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from coord.kv.commands import ClientRequest, EndSession, ExtCommand, LeaderCommand, stamp
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import ExtResult, RegisterResult
from coord.kv.store import KVStore
from coord.kv.types import ClientId, KVConfig, SeqNo
from coord.raft.types import Entry
from fs.meta.commands import (
    Create,
    FsCommand,
    FsQuery,
    GetAttr,
    Lookup,
    Mkdir,
    Mknod,
    Open,
    Release,
    encode_command,
    encode_query,
)
from fs.meta.context import FsConfig
from fs.meta.fsck import check
from fs.meta.machine import memory_meta_store, meta_machine, open_meta_store
from fs.meta.protocol import FS_SPACE
from fs.meta.results import AttrResult, FsErr, FsResult, decode_result
from fs.meta.state import FsReader
from fs.types import ROOT_CRED, ROOT_INODE, Attr, Cred, InodeId
from tests.unit.test_kv_support import Log

R = TypeVar("R")

MAP_SIZE = 1 << 28
TTL = 10_000
KV = KVConfig(session_ttl_ms=TTL, max_outstanding=64, expire_batch=4)
ALICE = Cred(1000, 1000)
BOB = Cred(1001, 1001)
CAROL = Cred(1002, 1002, (1000,))  # in Alice's group
ROOT = ROOT_CRED
ROOT_DIR = ROOT_INODE


class FsHarness:
    def __init__(self, store: KVStore, fs_config: FsConfig | None = None) -> None:
        self.store = store
        self.log = Log()
        self.machine: KVStateMachine = meta_machine(store, KV, fs_config)

    def apply(self, entry: Entry) -> Applied:
        (applied,) = self.machine.apply([entry])
        return applied

    def session(self) -> Session:
        result = self.apply(self.log.register()).result
        assert isinstance(result, RegisterResult)
        return Session(self, result.client_id)

    def ask(self, query: FsQuery) -> FsResult:
        return decode_result(self.machine.read_ext(FS_SPACE, encode_query(query)))

    def attr(self, inode: int) -> Attr:
        result = self.ask(GetAttr(InodeId(inode)))
        assert isinstance(result, AttrResult), result
        return result.attr

    def lookup(self, parent: int, name: bytes, cred: Cred = ROOT) -> FsResult:
        return self.ask(Lookup(InodeId(parent), name, cred))

    def leader(self, command: FsCommand) -> FsResult:
        data = stamp(LeaderCommand(ExtCommand(FS_SPACE, encode_command(command))), self.log.now)
        result = self.apply(self.log.raw(data)).result
        assert isinstance(result, ExtResult), result
        return decode_result(result.payload)

    def advance(self, ms: int) -> None:
        self.log.now += ms

    def fs_state(self) -> object:
        """Every FS table, in order (for "nothing changed" and determinism checks)."""
        with self.store.reader() as view:
            return view.dump().tables

    def fsck(self) -> list[str]:
        with self.store.reader() as view:
            return check(FsReader(view))


class Session:
    def __init__(self, h: FsHarness, cid: ClientId) -> None:
        self.h = h
        self.cid = cid
        self.seq = 0

    def run(self, command: FsCommand) -> FsResult:
        self.seq += 1
        body = ClientRequest(
            self.cid, SeqNo(self.seq), SeqNo(self.seq - 1),
            ExtCommand(FS_SPACE, encode_command(command)),
        )
        result = self.h.apply(self.h.log.body(body)).result
        assert isinstance(result, ExtResult), result
        return decode_result(result.payload)

    def end(self) -> None:
        self.h.apply(self.h.log.body(EndSession(self.cid)))

    def ok(self, command: FsCommand) -> FsResult:
        result = self.run(command)
        assert not isinstance(result, FsErr), f"{command} failed: {result}"
        return result

    def fails(self, command: FsCommand) -> int:
        """The errno of a refused command; the state must be unchanged by it."""
        before = self.h.fs_state()
        result = self.run(command)
        assert isinstance(result, FsErr), f"{command} succeeded: {result}"
        assert self.h.fs_state() == before, f"refused {command} changed the FS state"
        return result.errno

    def attr_of(self, command: FsCommand) -> Attr:
        result = self.ok(command)
        assert isinstance(result, AttrResult), result
        return result.attr

    # shorthands for the common commands
    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, cred: Cred = ROOT) -> Attr:
        return self.attr_of(Mkdir(InodeId(parent), name, mode, cred))

    def mknod(self, parent: int, name: bytes, mode: int = 0o644, cred: Cred = ROOT) -> Attr:
        return self.attr_of(Mknod(InodeId(parent), name, stat.S_IFREG | mode, 0, cred))

    def create(self, parent: int, name: bytes, mode: int = 0o644, cred: Cred = ROOT) -> Attr:
        return self.attr_of(Create(InodeId(parent), name, mode, 0o102, cred))  # O_RDWR|O_CREAT

    def open(self, inode: int, flags: int = 2, cred: Cred = ROOT) -> Attr:
        return self.attr_of(Open(InodeId(inode), flags, cred))

    def release(self, inode: int) -> None:
        self.ok(Release(InodeId(inode)))


def code(result: FsResult) -> int:
    """The errno of a query's refusal."""
    assert isinstance(result, FsErr), f"expected an error, got {result}"
    return result.errno


def make_store(kind: str, path: Path) -> KVStore:
    return open_meta_store(path, MAP_SIZE) if kind == "lmdb" else memory_meta_store()


@pytest.fixture
def fs() -> Iterator[FsHarness]:
    """The harness on the in-memory twin (the LMDB store is covered by the
    determinism tests, which compare the two)."""
    store = memory_meta_store()
    h = FsHarness(store)
    try:
        yield h
        assert h.fsck() == []
    finally:
        store.close()


@pytest.fixture(params=["memory", "lmdb"])
def any_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FsHarness]:
    store = make_store(request.param, tmp_path / "meta")
    h = FsHarness(store)
    try:
        yield h
        assert h.fsck() == []
    finally:
        store.close()
