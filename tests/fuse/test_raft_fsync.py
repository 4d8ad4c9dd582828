"""fsync is proven, not assumed: a whole Raft cluster on lossyfs loses power.

Every member keeps its LMDB files on its own lossyfs mount, which throws
away everything not fsynced when it "crashes".  The test writes keys
(killing the leader in the middle so elections and votes happen), then
SIGKILLs every member and crashes every file system at once, restarts, and
repeats.  Afterwards every acknowledged write is readable, and no member
granted its vote to two candidates in one term (votes are audited in the
members' logs, which live on an ordinary disk).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import trio

from coord.kv.remote import KvClient
from tests.lossyfs.fixtures import MakeLossyMount
from tests.support.meta_cluster import MetaCluster

VOTE = re.compile(r"node (\d+): vote granted to (\d+) in term (\d+)")


def _double_votes(cluster: MetaCluster) -> list[str]:
    votes: dict[tuple[int, int], set[int]] = defaultdict(set)
    for proc in cluster.group.procs:
        for voter, candidate, term in VOTE.findall(proc.log_text()):
            votes[(int(voter), int(term))].add(int(candidate))
    return [f"node {v} term {t}: {sorted(c)}" for (v, t), c in votes.items() if len(c) > 1]


async def _write_keys(cluster: MetaCluster, round_no: int, acked: dict[bytes, bytes]) -> None:
    async with cluster.client() as rpc:
        leader = await cluster.wait_leader(rpc, timeout=30)
        kv = KvClient(rpc, cluster.endpoints, timeout=20)
        await kv.open()
        for n in range(60):
            if n == 30:
                cluster.members[leader].kill()  # an election in the middle of the writes
            key, value = b"r%d-k%d" % (round_no, n), b"v%d" % n
            await kv.put(key, value)
            acked[key] = value
        cluster.start(leader)


async def _read_all(cluster: MetaCluster, acked: dict[bytes, bytes]) -> dict[bytes, object]:
    wrong: dict[bytes, object] = {}
    async with cluster.client() as rpc:
        await cluster.wait_leader(rpc, timeout=30)
        kv = KvClient(rpc, cluster.endpoints, timeout=20)
        for key, value in acked.items():
            found = await kv.get(key)
            if found is None or found.value != value:
                wrong[key] = None if found is None else found.value
    return wrong


async def test_acknowledged_writes_and_votes_survive_cluster_power_loss(
    tmp_path: Path, lossy_mount_factory: MakeLossyMount
) -> None:
    mounts = {i: lossy_mount_factory(f"disk{i}") for i in (1, 2, 3)}
    cluster = MetaCluster(tmp_path, 3, election_timeout=1.0,
                          data_dirs={i: m.mountpoint / f"meta{i}" for i, m in mounts.items()})
    acked: dict[bytes, bytes] = {}
    try:
        cluster.start_all()
        for round_no in range(3):
            await _write_keys(cluster, round_no, acked)
            cluster.close()  # SIGKILL every member ...
            for mount in mounts.values():
                await trio.to_thread.run_sync(mount.crash)  # ... and lose all unsynced data
            cluster.start_all()
            wrong = await _read_all(cluster, acked)
            assert not wrong, f"round {round_no}: acknowledged writes lost: {list(wrong)[:5]}"
        assert len(acked) == 180
        assert not _double_votes(cluster), _double_votes(cluster)
        assert sum(m.crashes for m in mounts.values()) == 9
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.close()
