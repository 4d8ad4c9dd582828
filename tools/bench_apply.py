"""A development microbenchmark of the KV state machine's apply (not a test):
`python -m tools.bench_apply [--batches 300] [--batch 64] [--retention N] [--no-fs]
[--profile]`.

It drives `KVStateMachine.apply` on an `LmdbKVStore` in a temporary folder
the way `ddfs bench raft` drives a member: `--batch` sessions (one per
caller), each sending Put ClientRequests with 256-byte values to keys
`bench/<caller>/<n mod 100>` and acknowledging its previous reply (acked =
seq - 1, as `KvClient` does), one Put per session per apply call, so one
apply is one LMDB commit of `--batch` entries.  With the file-system
extension (the default, like `ddfs meta`) every entry also runs its hooks.

It prints JSON: CPU (user + system, `time.process_time`) per applied entry
and per commit, and what a commit writes (`/proc/self/io`: bytes and write
calls, i.e. 4-KiB pages; LMDB with `sync=True` fdatasyncs once per commit).
`--retention N` sets `KVConfig.event_retention` and fills the event log to
it first, so every entry also drops an old event (the steady state of a
long-running member); the default keeps every event, as a fresh member does.
Compare runs back to back: the figures are per process, so other jobs on the
machine disturb them far less than wall-clock rates.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from coord.kv.commands import ClientRequest, Put, RegisterClient, stamp
from coord.kv.lmdb_state import LmdbKVStore
from coord.kv.machine import KVStateMachine
from coord.kv.results import PutResult, RegisterResult
from coord.kv.types import ClientId, KVConfig, SeqNo
from coord.raft.types import Entry, EntryKind, LogIndex, Term


def _io() -> tuple[int, int]:
    """(bytes written, write calls) of this process so far."""
    fields = dict(
        line.split(": ") for line in Path("/proc/self/io").read_text().splitlines()
    )
    return int(fields["wchar"]), int(fields["syscw"])


class _Driver:
    """Feeds one member's state machine as the Raft driver would: consecutive entries."""

    def __init__(self, fsm: KVStateMachine) -> None:
        self.fsm = fsm
        self.index = LogIndex(fsm.applied_index)
        self.now = 1_000

    def entry(self, body: ClientRequest | RegisterClient) -> Entry:
        self.index = LogIndex(self.index + 1)
        return Entry(Term(1), self.index, EntryKind.COMMAND, stamp(body, self.now))


def _open(path: Path, retention: int, fs: bool) -> tuple[LmdbKVStore, KVStateMachine]:
    config = KVConfig(session_ttl_ms=3_600_000, event_retention=retention)
    if fs:
        from fs.meta.machine import meta_machine, open_meta_store

        store = open_meta_store(path)
        return store, meta_machine(store, config)
    store = LmdbKVStore(path)
    return store, KVStateMachine(store, config)


def _register(d: _Driver, n: int) -> list[ClientId]:
    outcomes = d.fsm.apply([d.entry(RegisterClient()) for _ in range(n)])
    ids = [o.result.client_id for o in outcomes if isinstance(o.result, RegisterResult)]
    if len(ids) != n:
        raise RuntimeError(f"registering failed: {outcomes}")
    return ids


def run(batches: int, batch: int, retention: int, fs: bool, profile: bool) -> dict[str, object]:
    value = b"v" * 256
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as tmp:
        store, fsm = _open(Path(tmp), retention, fs)
        d = _Driver(fsm)
        clients = _register(d, batch)
        seqs = dict.fromkeys(clients, 0)

        def make_batch() -> list[Entry]:
            entries = []
            for n, cid in enumerate(clients):
                seqs[cid] += 1
                seq = seqs[cid]
                key = b"bench/%d/%d" % (n, seq % 100)
                req = ClientRequest(cid, SeqNo(seq), SeqNo(seq - 1), Put(key, value))
                entries.append(d.entry(req))
            d.now += 1
            return entries

        def apply(entries: list[Entry]) -> None:
            outcomes = fsm.apply(entries)
            if not all(isinstance(o.result, PutResult) for o in outcomes):
                raise RuntimeError(f"a put failed: {outcomes[0]}")

        # warm-up: create every key, and fill the event log to its bound if one is set
        for _ in range(max(100, -(-retention // batch) + 2 if retention else 0)):
            apply(make_batch())
        todo = [make_batch() for _ in range(batches)]  # built outside the measurement
        prof = cProfile.Profile(time.process_time) if profile else None
        io0, cpu0, t0 = _io(), time.process_time(), os.times()
        if prof is not None:
            prof.enable()
        for entries in todo:
            apply(entries)
        if prof is not None:
            prof.disable()
        cpu, io1, t1 = time.process_time() - cpu0, _io(), os.times()
        store_dir_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())
        store.close()
    if prof is not None:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    commits = batches
    return {
        "batch": batch,
        "fs_extension": fs,
        "event_retention": retention,
        "cpu_us_per_entry": round(cpu / (batches * batch) * 1e6, 1),
        "cpu_ms_per_commit": round(cpu / commits * 1e3, 3),
        "sys_us_per_entry": round((t1.system - t0.system) / (batches * batch) * 1e6, 1),
        "kib_written_per_commit": round((io1[0] - io0[0]) / commits / 1024, 1),
        "write_calls_per_commit": round((io1[1] - io0[1]) / commits, 1),
        "store_mib": round(store_dir_bytes / (1 << 20), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_apply", description=__doc__)
    parser.add_argument("--batches", type=int, default=300, help="commits measured")
    parser.add_argument("--batch", type=int, default=64, help="sessions = entries per commit")
    parser.add_argument("--retention", type=int, default=0,
                        help="event_retention (0: keep all); the log is filled to it first")
    parser.add_argument("--no-fs", action="store_true", help="without the FS extension")
    parser.add_argument("--profile", action="store_true", help="cProfile top list on stderr")
    args = parser.parse_args(argv)
    result = run(args.batches, args.batch, args.retention, not args.no_fs, args.profile)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
