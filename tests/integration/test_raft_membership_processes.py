"""Membership changes and leadership transfer on real `ddfs meta` processes.

* Every member of a 3-member cluster is replaced one by one while a client
  keeps writing: a new process starts with `ddfs meta --join` (empty; it asks
  to be added as a learner), `ddfs raft promote` makes it a voter, `ddfs raft
  remove` removes an old member - the leader first - whose process is then
  stopped.  At the end every acknowledged write is read back from the new
  members only, and `ddfs raft status` shows the new voters.
* `ddfs raft transfer` moves leadership to a chosen member and to "any".
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio

from coord.kv.remote import KvClient, KvError
from coord.rpc import RpcClient
from tests.support.meta_cluster import MetaCluster, meta_cluster
from tests.support.processes import Proc, ddfs_argv, free_ports

ELECTION = 0.4


def ddfs(cluster: MetaCluster, *args: str, endpoints: list[str]) -> str:
    """Run one `ddfs` command like an operator would; fail the test on a non-zero exit."""
    argv = ddfs_argv(*args, "--endpoints", ",".join(endpoints),
                     "--secret-file", str(cluster.secret_file))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout


async def run_ddfs(cluster: MetaCluster, *args: str, endpoints: list[str]) -> str:
    return await trio.to_thread.run_sync(lambda: ddfs(cluster, *args, endpoints=endpoints))


async def writer(rpc: RpcClient, endpoints: list[str], acked: dict[bytes, bytes],
                 stop: trio.Event) -> None:
    """Sequential puts of fresh keys; only those acknowledged OK are recorded."""
    kv = KvClient(rpc, endpoints, timeout=8.0, attempt_timeout=1.0)
    with trio.fail_after(30):
        await kv.open()
    for n in range(100_000):
        if stop.is_set():
            return
        key, value = b"w%06d" % n, b"v%d" % n
        try:
            await kv.put(key, value)
        except KvError:
            continue  # unknown outcome: not counted as acknowledged
        acked[key] = value


async def status_of(cluster: MetaCluster, rpc: RpcClient, address: str) -> dict[str, object]:
    from coord.raft.rpc import RaftStatus

    reply = await rpc.call(address, RaftStatus(), timeout=2.0)
    status: dict[str, object] = json.loads(reply.json)
    return status


async def wait_learner(cluster: MetaCluster, rpc: RpcClient, address: str, nid: int) -> None:
    """The joiner asked to be added: wait until its own log says it is a learner."""
    with trio.fail_after(30):
        while True:
            try:
                st = await status_of(cluster, rpc, address)
                if nid in st["learners"]:  # type: ignore[operator]
                    return
            except Exception:
                pass
            await trio.sleep(0.1)


def snapshot_config(tmp_path: Path) -> tuple[str, ...]:
    """Frequent snapshots and a short tail: a newcomer catches up by InstallSnapshot,
    and the configuration (with addresses) must survive compaction."""
    conf = tmp_path / "raft.toml"
    conf.write_text("[raft]\nsnapshot_every = 100\nkeep_tail = 20\n")
    return ("--config", str(conf))


async def test_every_member_is_replaced_one_by_one_under_writes(tmp_path: Path) -> None:
    new_ports = free_ports(3)
    new_addr = {3 + k: f"127.0.0.1:{p}" for k, p in enumerate(new_ports, start=1)}
    extra = snapshot_config(tmp_path)
    with meta_cluster(tmp_path, 3, election_timeout=ELECTION, extra_args=extra) as cluster:
        try:
            await _replace_all(cluster, new_addr, tmp_path, extra)
        except BaseException:
            print(cluster.logs())
            raise


async def _replace_all(cluster: MetaCluster, new_addr: dict[int, str], tmp_path: Path,
                       extra: tuple[str, ...]) -> None:
    acked: dict[bytes, bytes] = {}
    stop = trio.Event()
    every = cluster.endpoints + list(new_addr.values())
    live = dict(cluster.addresses)  # members that are still running
    removed_leader = False
    installed = 0
    async with cluster.client() as rpc, trio.open_nursery() as nursery:
        await cluster.wait_leader(rpc)
        kv = KvClient(rpc, cluster.endpoints, timeout=10.0)
        await kv.open()
        for n in range(250):  # past two snapshots: newcomers start from one
            await kv.put(b"pre%d" % n, b"p")
            acked[b"pre%d" % n] = b"p"
        nursery.start_soon(writer, rpc, every, acked, stop)
        for nid, address in new_addr.items():
            joiner = cluster.group.add(Proc(
                f"meta{nid}",
                ddfs_argv("-v", "meta", "--id", str(nid), "--listen", address,
                          "--join", ",".join(live.values()), "--data", str(tmp_path / f"m{nid}"),
                          "--secret-file", str(cluster.secret_file),
                          "--election-timeout", str(ELECTION), *extra),
                tmp_path / f"meta{nid}.log",
            ))
            cluster.members[nid] = joiner
            await trio.to_thread.run_sync(joiner.launch, "ready on")
            await wait_learner(cluster, rpc, address, nid)
            before = len(acked)
            await run_ddfs(cluster, "raft", "promote", str(nid), endpoints=list(live.values()))
            installed += int(str((await status_of(cluster, rpc, address))["snapshots_installed"]))
            live[nid] = address
            # The leader goes first; then the remaining old members.
            leader = await _leader(cluster, rpc, live)
            old = [i for i in live if i <= 3]
            victim = leader if leader in old else old[0]
            removed_leader |= victim == leader
            out = await run_ddfs(cluster, "raft", "remove", str(victim),
                                 endpoints=list(live.values()))
            assert "voters=" in out and str(victim) not in out.split("voters=")[1].split("]")[0]
            cluster.members[victim].stop()
            del live[victim]
            with trio.fail_after(20):  # writes go on with the new configuration
                while len(acked) < before + 5:
                    await trio.sleep(0.05)
        stop.set()
    assert removed_leader
    assert installed >= 1, "no newcomer caught up from a snapshot"
    assert set(live) == {4, 5, 6}
    async with cluster.client() as rpc:
        kv = KvClient(rpc, list(live.values()), timeout=15.0)
        await kv.open()
        for key, value in acked.items():
            found = await kv.get(key)
            assert found is not None and found.value == value, key
    status = await run_ddfs(cluster, "raft", "status", endpoints=list(live.values()))
    assert "voters: [4, 5, 6]  learners: []" in status, status
    print(f"acknowledged writes: {len(acked)}, snapshots installed by newcomers: {installed}")
    assert len(acked) >= 30


async def _leader(cluster: MetaCluster, rpc: RpcClient, live: dict[int, str]) -> int:
    with trio.fail_after(20):
        while True:
            for address in live.values():
                try:
                    st = await status_of(cluster, rpc, address)
                except Exception:
                    continue
                if st["role"] == "leader":
                    return int(str(st["id"]))
            await trio.sleep(0.1)


async def test_ddfs_raft_transfer_moves_leadership(tmp_path: Path) -> None:
    with meta_cluster(tmp_path, 3, election_timeout=ELECTION) as cluster:
        async with cluster.client() as rpc:
            leader = await cluster.wait_leader(rpc)
            target = next(i for i in cluster.ids if i != leader)
            out = await run_ddfs(cluster, "raft", "transfer", str(target),
                                 endpoints=cluster.endpoints)
            assert f"leader is now {target}" in out
            assert await cluster.wait_leader(rpc) == target
            out = await run_ddfs(cluster, "raft", "transfer", endpoints=cluster.endpoints)
            after = await cluster.wait_leader(rpc)
            assert after != target and f"leader is now {after}" in out
            # The cluster still takes writes after two transfers.
            kv = KvClient(rpc, cluster.endpoints, timeout=10.0)
            await kv.open()
            await kv.put(b"after-transfer", b"yes")
            found = await kv.get(b"after-transfer")
            assert found is not None and found.value == b"yes"
            # A refusal is reported with the leader's reason and a non-zero exit.
            argv = ddfs_argv("raft", "promote", "2", "--timeout", "2",
                             "--endpoints", ",".join(cluster.endpoints),
                             "--secret-file", str(cluster.secret_file))
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode != 0 and "not a learner" in done.stderr, done


async def test_ddfs_raft_add_waits_for_the_new_member_then_promotes_it(tmp_path: Path) -> None:
    """The operator's other order: `ddfs raft add` first (it adds a learner and
    keeps trying to promote it while it is behind), then the process starts with
    --join (told "already a member", it takes the address book from the reply)."""
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    with meta_cluster(tmp_path, 3, election_timeout=ELECTION) as cluster:
        async with cluster.client() as rpc:
            await cluster.wait_leader(rpc)
            kv = KvClient(rpc, cluster.endpoints, timeout=10.0)
            await kv.open()
            for n in range(50):  # some log for the newcomer to catch up on
                await kv.put(b"pre%d" % n, b"x" * 100)
            argv = ddfs_argv("raft", "add", "4", address, "--timeout", "60",
                             "--endpoints", ",".join(cluster.endpoints),
                             "--secret-file", str(cluster.secret_file))
            adder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
            try:
                await wait_learner(cluster, rpc, cluster.endpoints[0], 4)
                newcomer = cluster.group.add(Proc(
                    "meta4",
                    ddfs_argv("-v", "meta", "--id", "4", "--listen", address,
                              "--join", ",".join(cluster.endpoints),
                              "--data", str(tmp_path / "m4"),
                              "--secret-file", str(cluster.secret_file),
                              "--election-timeout", str(ELECTION)),
                    tmp_path / "meta4.log",
                ))
                await trio.to_thread.run_sync(newcomer.launch, "ready on")
                out, err = await trio.to_thread.run_sync(lambda: adder.communicate(timeout=90))
            finally:
                if adder.poll() is None:
                    adder.kill()
                    adder.wait()
            assert adder.returncode == 0, out + err
            assert "added 4 as a learner" in out and "voters=[1, 2, 3, 4]" in out, out
            with trio.fail_after(20):  # it votes now, and applies the whole log
                while True:
                    st = await status_of(cluster, rpc, address)
                    if st["voters"] == [1, 2, 3, 4] and int(str(st["applied_index"])) >= 50:
                        break
                    await trio.sleep(0.1)
