"""Snapshots with real `ddfs meta` processes: a follower stopped while the log is
compacted catches up by InstallSnapshot, and a member restarted after
compaction (even one whose state DB is gone) reloads from its snapshot and
replays the tail.  Replicas are compared by `raft.digest`, a hash of the
member's whole state (KV, sessions, file-system tables) at its applied index.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import trio

from coord.kv.remote import KvClient
from coord.raft.rpc import RaftDigest
from coord.raft.snapfile import current_meta, partial_state
from coord.rpc import RpcClient, RpcError
from tests.support.meta_cluster import MetaCluster, meta_cluster
from tests.support.processes import ROOT, ddfs_argv

SNAPSHOT_EVERY = 500
KEEP_TAIL = 100
CHUNK = 16384  # small chunks: a transfer spans many messages


def _config(tmp_path: Path, chunk: int = CHUNK) -> tuple[str, ...]:
    conf = tmp_path / "raft.toml"
    conf.write_text(
        f"[raft]\nsnapshot_every = {SNAPSHOT_EVERY}\nkeep_tail = {KEEP_TAIL}\n"
        f"snapshot_chunk_bytes = {chunk}\n"
    )
    return ("--config", str(conf))


async def _write(rpc: RpcClient, cluster: MetaCluster, n: int, tag: bytes) -> None:
    """n puts from 16 concurrent sessions (keys tag/<i>, values 200 bytes)."""

    async def worker(k: int) -> None:
        async with KvClient(rpc, cluster.endpoints, timeout=30) as kv:
            for i in range(k, n, 16):
                await kv.put(b"%s/%06d" % (tag, i), b"v%06d" % i * 25)

    async with trio.open_nursery() as nursery:
        for k in range(16):
            nursery.start_soon(worker, k)


async def _digests(rpc: RpcClient, cluster: MetaCluster) -> dict[int, tuple[int, int]]:
    out = {}
    for i, address in cluster.addresses.items():
        reply = await rpc.call(address, RaftDigest(), timeout=10.0)
        out[i] = (reply.applied, reply.digest)
    return out


async def _converged(rpc: RpcClient, cluster: MetaCluster, timeout: float = 60.0) -> None:
    """Every member applied the same index and holds the same state."""
    with trio.move_on_after(timeout):
        while True:
            try:
                digests = await _digests(rpc, cluster)
            except RpcError:
                digests = {}
            if len(digests) == len(cluster.ids) and len(set(digests.values())) == 1:
                return
            await trio.sleep(0.3)
    raise AssertionError(f"members did not converge: {await cluster.statuses(rpc)}")


async def test_stopped_follower_catches_up_by_install_snapshot(tmp_path: Path) -> None:
    with meta_cluster(tmp_path, 3, extra_args=_config(tmp_path)) as cluster:
        try:
            async with cluster.client() as rpc:
                leader = await cluster.wait_leader(rpc)
                victim = next(i for i in cluster.ids if i != leader)
                await _write(rpc, cluster, 200, b"before")
                await _converged(rpc, cluster)
                stopped_at = int((await cluster.statuses(rpc))[victim]["last_index"])  # type: ignore[call-overload]
                cluster.members[victim].signal(signal.SIGSTOP)
                try:
                    await _write(rpc, cluster, 4000, b"during")
                    st = (await cluster.statuses(rpc))[leader]
                    # The entries the follower lacks are gone from the leader's log.
                    assert int(st["first_index"]) > stopped_at + 1, st  # type: ignore[call-overload]
                    assert int(st["snapshot_index"]) >= 4000, st  # type: ignore[call-overload]
                finally:
                    cluster.members[victim].signal(signal.SIGCONT)
                resumed = trio.current_time()
                # Writes go on while it catches up: the leader keeps taking snapshots.
                await _write(rpc, cluster, 1000, b"after")
                await _converged(rpc, cluster)
                size = (tmp_path / f"meta{leader}" / "snap" / "snapshot.bin").stat().st_size
                print(f"follower {victim} caught up, 1000 writes meanwhile, in "
                      f"{trio.current_time() - resumed:.2f} s (leader's snapshot {size} bytes)")
                for line in cluster.members[victim].log_text().splitlines():
                    if "installed" in line or "taken" in line:
                        print(line)
                st = (await cluster.statuses(rpc))[victim]
                assert int(st["snapshots_installed"]) >= 1, st  # type: ignore[call-overload]
                assert int(st["first_index"]) > stopped_at + 1, st  # type: ignore[call-overload]
                # The caught-up follower serves the writes made while it was stopped.
                kv = KvClient(rpc, [cluster.addresses[victim]], timeout=10)
                found = await kv.get(b"during/003999")
                assert found is not None and found.value == b"v003999" * 25
                found = await kv.get(b"after/000999")
                assert found is not None and found.value == b"v000999" * 25
        except BaseException:
            print(cluster.logs())
            raise


async def test_a_follower_killed_mid_transfer_resumes_from_its_partial_snapshot(
    tmp_path: Path,
) -> None:
    with meta_cluster(tmp_path, 3, extra_args=_config(tmp_path, chunk=2048)) as cluster:
        try:
            async with cluster.client() as rpc:
                leader = await cluster.wait_leader(rpc)
                victim = next(i for i in cluster.ids if i != leader)
                await _converged(rpc, cluster)
                cluster.members[victim].signal(signal.SIGSTOP)
                try:
                    await _write(rpc, cluster, 3000, b"x")
                finally:
                    cluster.members[victim].signal(signal.SIGCONT)
                # Kill it once part of the snapshot (2 KiB chunks) is on its disk.
                folder = tmp_path / f"meta{victim}" / "snap"
                got = None
                with trio.move_on_after(30):
                    while got is None or not 0 < got[1] < got[0].size:
                        await trio.sleep(0.005)
                        got = partial_state(folder)
                assert got is not None and 0 < got[1] < got[0].size, got
                cluster.members[victim].kill()
                cluster.start(victim)
                await _converged(rpc, cluster)
                log = cluster.members[victim].log_text()
                assert f"resuming snapshot {got[0].index}:" in log, log[-3000:]
                st = (await cluster.statuses(rpc))[victim]
                assert int(st["snapshot_index"]) >= got[0].index, st  # type: ignore[call-overload]
        except BaseException:
            print(cluster.logs())
            raise


async def test_a_transfer_resumes_from_a_new_leader_after_the_old_one_dies(
    tmp_path: Path,
) -> None:
    with meta_cluster(tmp_path, 3, extra_args=_config(tmp_path, chunk=2048)) as cluster:
        try:
            async with cluster.client() as rpc:
                leader = await cluster.wait_leader(rpc)
                victim, other = (i for i in cluster.ids if i != leader)
                await _converged(rpc, cluster)
                cluster.members[victim].signal(signal.SIGSTOP)
                try:
                    await _write(rpc, cluster, 3000, b"x")
                    # Both live members hold the same snapshot (same index, same bytes).
                    with trio.move_on_after(20):
                        while True:
                            st = await cluster.statuses(rpc)
                            if st[leader]["snapshot_index"] == st[other]["snapshot_index"]:
                                break
                            await trio.sleep(0.1)
                finally:
                    cluster.members[victim].signal(signal.SIGCONT)
                target = st[leader]["snapshot_index"]
                folder = tmp_path / f"meta{victim}" / "snap"
                got = None
                with trio.move_on_after(30):
                    # (A chunk of an older snapshot may still be in flight: wait for this one.)
                    while got is None or got[0].index != target or not 0 < got[1] < got[0].size:
                        await trio.sleep(0.005)
                        got = partial_state(folder)
                assert got is not None and 0 < got[1] < got[0].size, (got, target)
                cluster.members[leader].kill()  # the leader dies mid-transfer
                await cluster.wait_leader(rpc, exclude=leader)
                cluster.start(leader)
                await _converged(rpc, cluster)
                log = cluster.members[victim].log_text()
                # The new leader went on from the follower's offset: one transfer, not two.
                assert log.count(f"receiving snapshot {got[0].index} ") == 1, log[-3000:]
                assert f"snapshot {got[0].index} installed" in log, log[-3000:]
        except BaseException:
            print(cluster.logs())
            raise


async def test_member_restarted_after_compaction_reloads_its_snapshot(tmp_path: Path) -> None:
    with meta_cluster(tmp_path, 3, extra_args=_config(tmp_path)) as cluster:
        try:
            async with cluster.client() as rpc:
                leader = await cluster.wait_leader(rpc)
                victim = next(i for i in cluster.ids if i != leader)
                await _write(rpc, cluster, 1500, b"a")
                await _converged(rpc, cluster)
                st = (await cluster.statuses(rpc))[victim]
                assert int(st["snapshot_index"]) >= SNAPSHOT_EVERY, st  # type: ignore[call-overload]
                assert int(st["first_index"]) > 1, st  # type: ignore[call-overload]
                # A plain restart: the state DB is intact, the tail is replayed.
                cluster.members[victim].kill()
                cluster.start(victim)
                await _write(rpc, cluster, 300, b"b")
                await _converged(rpc, cluster)
                # The state DB is lost: the member restores its own snapshot, then
                # replays the log after it (no help from the leader needed).
                cluster.members[victim].kill()
                shutil.rmtree(tmp_path / f"meta{victim}" / "kv")
                cluster.start(victim)
                await _converged(rpc, cluster)
                log = cluster.members[victim].log_text()
                assert "restored the state from snapshot" in log, log[-3000:]
                await _write(rpc, cluster, 100, b"c")
                await _converged(rpc, cluster)
                await trio.to_thread.run_sync(_status_shows_compaction, cluster)
                # Snapshots are taken at multiples of snapshot_every: members' snapshots of
                # one index are the same bytes (what lets a transfer resume across leaders).
                metas = [current_meta(tmp_path / f"meta{i}" / "snap") for i in cluster.ids]
                pairs = [(a, b) for a in metas for b in metas
                         if a is not None and b is not None and a is not b and a.index == b.index]
                assert pairs and all(a == b for a, b in pairs), metas
                assert all(m is not None and m.index % SNAPSHOT_EVERY == 0 for m in metas), metas
        except BaseException:
            print(cluster.logs())
            raise


def _status_shows_compaction(cluster: MetaCluster) -> None:
    """`ddfs raft status` shows each member's snapshot index and first log index."""
    env = {**os.environ, "DDFS_ENDPOINTS": ",".join(cluster.endpoints),
           "DDFS_SECRET_FILE": str(cluster.secret_file)}

    def ddfs(*args: str) -> str:
        out = subprocess.run(ddfs_argv(*args), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def indexes() -> dict[int, tuple[int, int]]:
        rows = json.loads(ddfs("raft", "status", "--json"))
        assert len(rows) == 3
        for row in rows:
            assert row["snapshot_index"] >= SNAPSHOT_EVERY and row["first_index"] > 1, row
            assert row["first_index"] - 1 <= row["snapshot_index"] <= row["applied_index"], row
        return {r["id"]: (r["snapshot_index"], r["first_index"]) for r in rows}

    for _ in range(5):  # a snapshot still being taken may move them between two calls
        before = indexes()
        # The first line lists the voters and learners; the table follows.
        table = [ln for ln in ddfs("raft", "status").splitlines() if not ln.startswith("voters:")]
        if indexes() == before:
            break
    assert table[0].split()[7:9] == ["snapshot", "first"], table[0]
    shown = {int(line.split()[0]): line.split()[7:9] for line in table[1:]}
    assert shown == {i: [str(s), str(f)] for i, (s, f) in before.items()}, table
