"""Shared helpers for the KV tests (no tests here): a log builder and store harnesses.

`Log` hands out consecutive Raft entries the way a leader would propose them:
KV bodies stamped with a timestamp, plus NOOP/CONFIG entries.  `StoreHarness`
opens a KVStore (twin or LMDB) and restarts it like a crashed process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coord.kv.commands import Body, ClientRequest, Command, KeepAlive, RegisterClient, stamp
from coord.kv.lmdb_state import LmdbKVStore
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import RegisterResult, Result
from coord.kv.store import KVStore, MemoryKVStore
from coord.kv.types import ClientId, KVConfig, SeqNo
from coord.raft.types import Entry, EntryKind, LogIndex, Term

MAP_SIZE = 1 << 26
TTL = 1_000  # ms of log time; small so tests can step past it
CONFIG = KVConfig(session_ttl_ms=TTL, max_outstanding=4, expire_batch=2)


class Log:
    """Builds entries with consecutive indexes; every KV entry is stamped with `now`."""

    def __init__(self, start: int = 1) -> None:
        self.next_index = start
        self.now = 0  # the proposing leader's clock, ms
        self.entries: list[Entry] = []  # everything built, in order (the "Raft log")

    def _entry(self, kind: EntryKind, data: bytes = b"") -> Entry:
        entry = Entry(Term(1), LogIndex(self.next_index), kind, data)
        self.next_index += 1
        self.entries.append(entry)
        return entry

    def body(self, body: Body, at: int | None = None) -> Entry:
        if at is not None:
            self.now = at
        return self._entry(EntryKind.COMMAND, stamp(body, self.now))

    def register(self, at: int | None = None) -> Entry:
        return self.body(RegisterClient(), at)

    def request(
        self, cid: ClientId, seq: int, command: Command, acked: int = 0, at: int | None = None
    ) -> Entry:
        return self.body(ClientRequest(cid, SeqNo(seq), SeqNo(acked), command), at)

    def keep_alive(self, cid: ClientId, acked: int = 0, at: int | None = None) -> Entry:
        return self.body(KeepAlive(cid, SeqNo(acked)), at)

    def noop(self) -> Entry:
        return self._entry(EntryKind.NOOP)

    def raw(self, data: bytes) -> Entry:
        return self._entry(EntryKind.COMMAND, data)


class StoreHarness:
    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path
        self.store: KVStore = (
            LmdbKVStore(path, map_size=MAP_SIZE) if kind == "lmdb" else MemoryKVStore()
        )

    def restart(self) -> KVStore:
        """A process crash and restart: every committed transaction is kept."""
        if isinstance(self.store, MemoryKVStore):
            self.store = self.store.crash()
        else:
            self.store.close()
            self.store = LmdbKVStore(self.path, map_size=MAP_SIZE)
        return self.store


@pytest.fixture(params=["memory", "lmdb"])
def kv_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreHarness]:
    h = StoreHarness(request.param, tmp_path / "kv")
    try:
        yield h
    finally:
        h.store.close()


class Driver:
    """A machine plus its log: apply entries one at a time and return the result."""

    def __init__(self, store: KVStore, config: KVConfig = CONFIG) -> None:
        self.log = Log()
        self.machine = KVStateMachine(store, config)

    def run(self, entry: Entry) -> Result | None:
        (applied,) = self.machine.apply([entry])
        assert applied.index == entry.index
        return applied.result

    def apply(self, entry: Entry) -> Applied:
        (applied,) = self.machine.apply([entry])
        return applied

    def session(self, at: int | None = None) -> ClientId:
        result = self.run(self.log.register(at))
        assert isinstance(result, RegisterResult)
        return result.client_id
