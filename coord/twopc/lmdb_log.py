"""LmdbLog: a node's 2PC log and data in one LMDB environment.

Layout (one env, so one commit covers the record and the data it explains):

* named DB ``log``:  key = sequence number (big-endian u64, so LMDB order is
  append order), value = `records.encode_record(record)`.
* named DB ``data``: key = UTF-8 key, value = bytes (participants only).
* named DB ``meta``: ``format`` -> FORMAT_VERSION.

Invariants: every synced append is one LMDB write transaction committed with
the env's `sync=True` (fdatasync before `commit()` returns), holding the
record, its data writes and every unsynced append before it, so a crash
leaves all of it or none.  Unsynced appends wait in memory for the next
synced one (LMDB's own no-sync mode is not used: without the fsync between
data and meta pages a power cut can corrupt the whole file).  Calls block;
trio drivers run them in a worker thread.  No transaction outlives its call.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import lmdb

from coord.twopc.log import apply_changes
from coord.twopc.records import Change, LogRecord, decode_record, encode_record

FORMAT_VERSION = 1
_U64 = struct.Struct(">Q")
_FORMAT = b"format"


class LogFormatError(RuntimeError):
    """The folder holds a log of another format version, or not a 2PC log."""


class LmdbLog:
    def __init__(self, path: Path, *, map_size: int = 1 << 28) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=map_size, max_dbs=3, sync=True,
                              metasync=True, writemap=False)
        self._log = self._env.open_db(b"log")
        self._data = self._env.open_db(b"data")
        meta = self._env.open_db(b"meta")
        with self._env.begin(write=True) as txn:
            found = txn.get(_FORMAT, db=meta)
            if found is None:
                txn.put(_FORMAT, _U64.pack(FORMAT_VERSION), db=meta)
            elif found != _U64.pack(FORMAT_VERSION):
                raise LogFormatError(f"{path}: 2PC log format {found!r}, "
                                     f"expected {FORMAT_VERSION}")
            with txn.cursor(db=self._log) as cur:
                self._next = _U64.unpack(cur.key())[0] + 1 if cur.last() else 1
        self._pending: list[tuple[LogRecord, tuple[Change, ...]]] = []

    def append(self, record: LogRecord, writes: Sequence[Change] = (), *,
               sync: bool = True) -> None:
        self._pending.append((record, tuple(writes)))
        if sync:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        seq = self._next
        with self._env.begin(write=True) as txn:
            for record, writes in self._pending:
                txn.put(_U64.pack(seq), encode_record(record), db=self._log)
                seq += 1
                for c in writes:
                    key = c.key.encode()
                    if c.value is None:
                        txn.delete(key, db=self._data)
                    else:
                        txn.put(key, c.value, db=self._data)
        # Only after a successful commit: a failed one leaves both untouched.
        self._next = seq
        self._pending = []

    def records(self) -> list[LogRecord]:
        with self._env.begin() as txn, txn.cursor(db=self._log) as cur:
            out = [decode_record(bytes(v)) for _, v in cur]
        return out + [r for r, _ in self._pending]

    def data(self) -> dict[str, bytes]:
        with self._env.begin() as txn, txn.cursor(db=self._data) as cur:
            out = {bytes(k).decode(): bytes(v) for k, v in cur}
        for _, writes in self._pending:
            apply_changes(out, writes)
        return out

    def close(self) -> None:
        self.flush()
        self._env.close()
