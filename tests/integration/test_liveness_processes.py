"""Chunk-server failure detection on a real 3 + 3 cluster of `ddfs` processes.

One cluster, phases in order (each waits with a bound, never a fixed sleep):

1. SIGSTOP chunk server 3: the metadata leader logs the suspicion with the
   phi detector's reason, `meta.liveness` and `ddfs status --json` show it
   suspected (phi above the threshold), it is still recorded alive and its
   replicas still count (a pause is not a loss);
2. SIGCONT: the leader logs the recovery ("heartbeat after N s") and the
   server is alive again;
3. SIGKILL for longer than the dead timeout: the leader logs the death and
   records it (`ServerState(alive=False)`), and the chunk it held is
   reported under-replicated (leader count and `ddfs status`);
4. restart it: recovered from dead, recorded alive again, nothing
   under-replicated;
5. kill the metadata leader: the new leader starts with no history, logs its
   grace period and suspects nobody while the chunk servers find it.

The cluster uses the default `LivenessConfig` (φ-accrual, threshold 8,
dead after 15 s of silence): `ddfs meta` does not read liveness settings
yet.  Chunk servers beat every 0.3 s.  Runs in ~35 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from coord.kv.remote import LeaderRouter
from coord.rpc import RpcClient
from fs.meta.client import MetaClient
from fs.meta.liveness import LivenessConfig
from fs.meta.liveness_protocol import LivenessQuery, LivenessReply, ServerView
from fs.types import ROOT_CRED, ROOT_INODE, ServerId
from tests.support.fs_cluster import FsCluster, fs_cluster
from tests.support.processes import ROOT, ddfs_argv
from tools import clusterconf
from tools.clusterconf import ChunkMember, ClusterConfig, MetaMember

DEFAULTS = LivenessConfig()
VICTIM = 3


async def liveness(cluster: FsCluster, rpc: RpcClient) -> LivenessReply:
    router = LeaderRouter(cluster.endpoints, timeout=10.0)

    async def attempt(address: str) -> LivenessReply:
        return await rpc.call(address, LivenessQuery(), timeout=2.0)

    return await router.call(attempt)


async def wait_view(cluster: FsCluster, rpc: RpcClient, what: str, timeout: float,
                    ok: Callable[[ServerView, LivenessReply], bool]) -> LivenessReply:
    """Poll `meta.liveness` until the victim's row satisfies `ok`."""
    reply = LivenessReply("none")
    with trio.move_on_after(timeout):
        while True:
            reply = await liveness(cluster, rpc)
            row = next((v for v in reply.servers if v.server == VICTIM), None)
            if row is not None and ok(row, reply):
                return reply
            await trio.sleep(0.2)
    raise AssertionError(f"server {VICTIM} not {what} within {timeout} s: {reply}\n"
                         + cluster.logs())


def victim(reply: LivenessReply) -> ServerView:
    return next(v for v in reply.servers if v.server == VICTIM)


def meta_logs(cluster: FsCluster, since: dict[str, int] | None = None) -> str:
    """The metadata members' logs (from the byte offsets in `since`)."""
    out = []
    for i, proc in cluster.meta.members.items():
        data = proc.log_path.read_bytes() if proc.log_path.exists() else b""
        out.append(data[(since or {}).get(f"meta{i}", 0):].decode(errors="replace"))
    return "\n".join(out)


def log_offsets(cluster: FsCluster) -> dict[str, int]:
    return {f"meta{i}": p.log_path.stat().st_size if p.log_path.exists() else 0
            for i, p in cluster.meta.members.items()}


async def wait_log(cluster: FsCluster, text: str, timeout: float = 5.0,
                   since: dict[str, int] | None = None) -> str:
    """The first metadata log line containing `text` (the leader writes it)."""
    with trio.move_on_after(timeout):
        while True:
            for line in meta_logs(cluster, since).splitlines():
                if text in line:
                    return line
            await trio.sleep(0.1)
    raise AssertionError(f"no metadata log line with {text!r}\n" + cluster.logs())


def cluster_file(cluster: FsCluster) -> Path:
    """A cluster TOML for `ddfs status --config` naming this test's processes."""
    config = ClusterConfig(
        name="liveness", secret_file=cluster.secret_file,
        meta=tuple(MetaMember(i, a, cluster.base / f"meta{i}")
                   for i, a in cluster.meta.addresses.items()),
        chunks=tuple(ChunkMember(i, a, cluster.base / f"chunk{i}")
                     for i, a in cluster.chunk_addresses.items()),
    ).validate()
    path = cluster.base / "cluster.toml"
    clusterconf.save(config, path)
    return path


async def ddfs_status(path: Path) -> dict[str, object]:
    done = await trio.run_process(ddfs_argv("status", "--config", str(path), "--json"),
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  cwd=ROOT)
    assert done.returncode in (0, 1), done.stderr.decode()  # 1: not healthy
    status: dict[str, object] = json.loads(done.stdout)
    return status


async def allocate_one_chunk(cluster: FsCluster, rpc: RpcClient) -> None:
    """A file with chunk 0 placed on all three servers (metadata only: under-replication
    is judged on the chunk map, and no chunk-server write path is involved)."""
    async with MetaClient(rpc, cluster.endpoints, timeout=20.0) as meta:
        f = await meta.create(ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, ROOT_CRED)
        loc = await meta.alloc_chunk(f.inode, 0)
        assert sorted(s for s, _ in loc.replicas) == [1, 2, 3]
        await meta.release(f.inode)


async def pause_and_resume(cluster: FsCluster, rpc: RpcClient, status_file: Path) -> None:
    # A fresh cluster registers its servers one by one: let the detector learn their
    # 0.3 s rhythm first (until then it assumes the 1 s prior).
    await trio.sleep(2.0)
    proc = cluster.chunks[VICTIM]
    proc.signal(signal.SIGSTOP)
    try:
        reply = await wait_view(cluster, rpc, "suspected", 10.0,
                                lambda v, _: v.state == "suspected")
        row = victim(reply)
        assert reply.detector == "phi" and row.phi > reply.threshold == DEFAULTS.phi_threshold
        assert row.reason.startswith("phi ") and row.recorded_alive
        mean = re.search(r"mean interval (\d+\.\d+) s", row.reason)
        assert mean is not None and 0.2 < float(mean.group(1)) < 0.6, row.reason  # not 1 s
        assert reply.under_replicated == 0 and reply.at_risk == 1  # at risk, not lost
        line = await wait_log(cluster, f"chunk server {VICTIM} suspected: phi ")
        assert " WARNING " in line and "> threshold 8.00 (silent" in line, line
        status = await ddfs_status(status_file)
        rows = {r["id"]: r for r in status["chunk_servers"]}  # type: ignore[attr-defined]
        assert rows[VICTIM]["state"] == "suspected" and not rows[VICTIM]["alive"], rows
        assert rows[VICTIM]["phi"] > 8.0 and rows[VICTIM]["reason"].startswith("phi ")
        assert rows[1]["state"] == rows[2]["state"] == "alive"
        assert status["healthy"] is False and status["under_replicated"] == 0
        assert victim(await liveness(cluster, rpc)).state == "suspected"  # not dead yet
    finally:
        proc.signal(signal.SIGCONT)
    await wait_view(cluster, rpc, "recovered", 5.0, lambda v, _: v.state == "alive")
    line = await wait_log(cluster, f"chunk server {VICTIM} recovered: heartbeat after ")
    assert " INFO " in line, line


async def kill_until_dead(cluster: FsCluster, rpc: RpcClient, status_file: Path) -> None:
    cluster.chunks[VICTIM].kill()
    start = trio.current_time()
    reply = await wait_view(cluster, rpc, "recorded dead", DEFAULTS.dead_after + 10.0,
                            lambda v, _: v.state == "dead" and not v.recorded_alive)
    assert trio.current_time() - start >= DEFAULTS.dead_after - 1.0  # never a quick verdict
    assert reply.under_replicated == 1
    line = await wait_log(cluster, f"chunk server {VICTIM} declared dead: suspected for ")
    assert " WARNING " in line and "dead timeout 15.0 s" in line, line
    await wait_log(cluster, f"chunk server {VICTIM} recorded dead")
    status = await ddfs_status(status_file)
    rows = {r["id"]: r for r in status["chunk_servers"]}  # type: ignore[attr-defined]
    assert rows[VICTIM]["state"] == "dead" and rows[VICTIM]["recorded_alive"] is False
    assert status["under_replicated"] == 1
    files = status["under_replicated_files"]
    assert [(f["path"], sorted(f["live_replicas"])) for f in files] == [  # type: ignore[attr-defined]
        ("/f", [1, 2])]


async def restart(cluster: FsCluster, rpc: RpcClient) -> None:
    cluster.chunks[VICTIM].launch("ready on")
    reply = await wait_view(cluster, rpc, "restored", 10.0,
                            lambda v, _: v.state == "alive" and v.recorded_alive)
    assert reply.under_replicated == 0 and reply.at_risk == 0
    line = await wait_log(cluster, f"chunk server {VICTIM} recovered from dead: heartbeat after")
    assert " INFO " in line
    await wait_log(cluster, f"chunk server {VICTIM} recorded alive again")


async def new_leader_grace(cluster: FsCluster, rpc: RpcClient) -> None:
    old = await cluster.meta.wait_leader(rpc)
    since = log_offsets(cluster)
    cluster.meta.members[old].kill()
    new = await cluster.meta.wait_leader(rpc, exclude=old)
    line = await wait_log(cluster, "leading: chunk-server liveness starts empty", since=since)
    assert "grace period" in line
    # Let the grace period and a few more seconds pass: nobody is suspected, every
    # chunk server is alive in the new leader's fresh view.
    await trio.sleep(DEFAULTS.grace + 1.0)
    reply = await liveness(cluster, rpc)
    assert [(v.server, v.state) for v in reply.servers] == [
        (ServerId(1), "alive"), (ServerId(2), "alive"), (ServerId(3), "alive")], reply
    text = meta_logs(cluster, since)
    judged = re.findall(r"chunk server \d+ (?:suspected|declared dead|recorded)", text)
    assert judged == [], f"new leader {new} judged a chunk server:\n{text}"


async def test_pause_recovery_death_and_restore_of_a_chunk_server(tmp_path: Path) -> None:
    with fs_cluster(tmp_path, heartbeat_interval=0.3) as cluster:
        status_file = cluster_file(cluster)
        async with cluster.client() as rpc:
            await cluster.wait_ready(rpc)
            await allocate_one_chunk(cluster, rpc)
            await pause_and_resume(cluster, rpc, status_file)
            await kill_until_dead(cluster, rpc, status_file)
            await restart(cluster, rpc)
            await new_leader_grace(cluster, rpc)
