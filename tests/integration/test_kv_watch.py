"""Watches on a real 3-member `ddfs meta` cluster (docs/watch.md).

* A watcher from index 1 sees every write of a concurrent writer, in order,
  exactly once, while the member it watches through (the leader, so the
  writer fails over too) is SIGKILLed and it carries on at another member;
  afterwards every surviving member, and the victim once restarted, serves
  the same stream from index 1.
* With a small retention bound, a watch from an index behind the floor gets
  COMPACTED with the floor (client: EventsCompacted; `ddfs kv watch`: the
  message and exit status 2), and `ddfs kv watch` prints the events after it.
* With snapshots every 40 entries, every member's log is compacted behind
  its snapshot: a watch from 1 gets COMPACTED with a snapshot index, a watch
  from there on gets every later write; a member that was down and caught
  up by InstallSnapshot starts its log at the snapshot it installed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import trio

from coord.kv.remote import EventsCompacted, KvClient, Watch
from coord.kv.types import EventKind, WatchEvent
from coord.rpc import RpcClient
from tests.support.meta_cluster import MetaCluster, meta_cluster
from tests.support.processes import ROOT, ddfs_argv

WRITES = 40  # keys under w/ (and as many under x/, which the watcher must not see)


async def _collect(stream: Watch, n: int, into: list[WatchEvent] | None = None
                   ) -> list[WatchEvent]:
    out = into if into is not None else []
    with trio.fail_after(60):
        async for ev in stream:
            out.append(ev)
            if len(out) == n:
                break
    return out


async def _writer(kv: KvClient, written: list[tuple[bytes, int]]) -> None:
    await kv.open()
    for n in range(WRITES):
        key = b"w/%03d" % n
        written.append((key, (await kv.put(key, b"v%d" % n)).revision))
        await kv.put(b"x/%03d" % n, b"other")  # interleaved, outside the prefix
        await trio.sleep(0.02)


async def test_a_watcher_sees_every_write_once_in_order_across_a_member_kill(
    tmp_path: Path,
) -> None:
    with meta_cluster(tmp_path, 3) as cluster:
        async with cluster.client() as rpc:
            victim = await cluster.wait_leader(rpc)
            others = [cluster.addresses[i] for i in cluster.ids if i != victim]
            # The watcher's router starts with the first endpoint: the victim.
            watcher = KvClient(rpc, [cluster.addresses[victim], *others], timeout=30)
            writer = KvClient(rpc, cluster.endpoints, timeout=30)
            written: list[tuple[bytes, int]] = []
            seen: list[WatchEvent] = []
            seen_at_kill = -1

            async def kill_when_a_third_is_seen() -> None:
                nonlocal seen_at_kill
                with trio.fail_after(60):
                    while len(seen) < WRITES // 3:
                        await trio.sleep(0.01)
                seen_at_kill = len(seen)
                cluster.members[victim].kill()

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_writer, writer, written)
                    nursery.start_soon(kill_when_a_third_is_seen)
                    stream = watcher.watch(b"w/", 1, wait_s=1.0)
                    await _collect(stream, WRITES, seen)
            except BaseException:
                print(cluster.logs())
                raise
            assert 0 < seen_at_kill < WRITES  # the kill happened mid-stream
            assert stream.member in others  # and the watcher moved on
            assert [(ev.key, ev.index) for ev in seen] == written  # in order, once each
            assert all(ev.kind is EventKind.PUT and ev.sub == 0 for ev in seen)
            assert [ev.value for ev in seen] == [b"v%d" % n for n in range(WRITES)]
            await _same_stream_on_every_survivor(cluster, rpc, victim, seen)
            # The victim's log survived SIGKILL, and its replay recorded nothing twice.
            cluster.start(victim)
            restarted = KvClient(rpc, [cluster.addresses[victim]], timeout=30)
            assert await _collect(restarted.watch(b"w/", 1, wait_s=1.0), len(seen)) == seen


async def _same_stream_on_every_survivor(
    cluster: MetaCluster, rpc: RpcClient, victim: int, seen: list[WatchEvent]
) -> None:
    for i in cluster.ids:
        if i == victim:
            continue
        only_i = KvClient(rpc, [cluster.addresses[i]], timeout=30)
        got = await _collect(only_i.watch(b"w/", 1, wait_s=1.0), len(seen))
        assert got == seen, f"member {i}"


def _ddfs(cluster: MetaCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DDFS_ENDPOINTS": ",".join(cluster.endpoints),
           "DDFS_SECRET_FILE": str(cluster.secret_file)}
    return subprocess.run(ddfs_argv(*args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


async def _fill(cluster: MetaCluster) -> tuple[list[int], int]:
    """Eight puts and a delete under c/; the indexes of the puts and the floor."""
    async with cluster.client() as rpc:
        kv = KvClient(rpc, cluster.endpoints, timeout=30)
        await kv.open()
        revs = [int((await kv.put(b"c/%d" % n, b"v%d" % n)).revision) for n in range(8)]
        await kv.delete(b"c/0")
        # Each member answers from what it has applied (and compacted): wait until
        # every one has applied the delete, so any of them gives the same floor.
        floors = {i: 0 for i in cluster.ids}
        with trio.fail_after(30):
            while min(floors.values()) < revs[4]:
                for i in cluster.ids:
                    floors[i] = await _floor(KvClient(rpc, [cluster.addresses[i]], timeout=10))
                await trio.sleep(0.05)
        assert len(set(floors.values())) == 1, floors
        return revs, floors[cluster.ids[0]]


async def _floor(kv: KvClient) -> int:
    """The COMPACTED floor a watch of c/ from index 1 gets; 0 from a follower that
    has not applied far enough to compact yet (it still yields the first put)."""
    try:
        async for _ in kv.watch(b"c/", 1, wait_s=1.0):
            return 0
    except EventsCompacted as exc:
        return exc.floor
    raise AssertionError("a watch from index 1 neither yielded nor was compacted")


def test_compacted_and_the_cli(tmp_path: Path) -> None:
    with meta_cluster(tmp_path, 3, extra_args=("--event-retention", "4")) as cluster:
        revs, floor = trio.run(_fill, cluster)
        # retention 4: the delete and the last three puts are kept, the rest is gone
        assert floor == revs[4]
        old = _ddfs(cluster, "kv", "watch", "c/", "--from", "1")
        assert old.returncode == 2 and old.stdout == ""
        assert f"COMPACTED: the events up to index {floor} are gone" in old.stderr
        text = _ddfs(cluster, "kv", "watch", "c/", "--from", str(floor + 1), "--count", "4")
        assert text.returncode == 0, text.stderr
        assert text.stdout.splitlines()[:3] == [f"{revs[n]}.0 PUT c/{n} v{n}" for n in (5, 6, 7)]
        assert text.stdout.splitlines()[3].endswith(".0 DELETE c/0")
        js = _ddfs(cluster, "kv", "watch", "c/", "--from", str(revs[7]), "--count", "2",
                   "--json")
        assert [json.loads(line) for line in js.stdout.splitlines()] == [
            {"index": revs[7], "sub": 0, "op": "put", "key": "c/7", "value": "v7"},
            {"index": revs[7] + 1, "sub": 0, "op": "delete", "key": "c/0", "value": None},
        ]
        _watch_from_now(cluster, revs[7] + 1)


def _watch_from_now(cluster: MetaCluster, last_index: int) -> None:
    """Without --from the watch starts after what is applied: it prints a later put."""
    env = {**os.environ, "DDFS_ENDPOINTS": ",".join(cluster.endpoints),
           "DDFS_SECRET_FILE": str(cluster.secret_file)}
    watcher = subprocess.Popen(ddfs_argv("kv", "watch", "c/", "--count", "1"), cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for n in range(50):  # until the watcher has started and seen one
            assert _ddfs(cluster, "kv", "put", "c/now", str(n)).returncode == 0
            if watcher.poll() is not None:
                break
        out, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    assert watcher.returncode == 0, err
    index, op, key, value = out.split()
    assert int(index.split(".")[0]) > last_index and (op, key) == ("PUT", "c/now")
    assert value.isdigit()


def _snapshot_config(tmp_path: Path) -> tuple[str, ...]:
    conf = tmp_path / "raft.toml"
    conf.write_text("[raft]\nsnapshot_every = 40\nkeep_tail = 10\n")
    return ("--config", str(conf))


async def _snapshot_indexes(cluster: MetaCluster, rpc: RpcClient, at_least: int) -> dict[int, int]:
    with trio.fail_after(30):
        while True:
            st = await cluster.statuses(rpc)
            got = {i: int(str(s["snapshot_index"])) for i, s in st.items()}
            if len(got) == len(cluster.ids) and min(got.values()) >= at_least:
                return got
            await trio.sleep(0.1)


async def test_events_are_compacted_behind_snapshots_and_restored_members_start_there(
    tmp_path: Path,
) -> None:
    with meta_cluster(tmp_path, 3, extra_args=_snapshot_config(tmp_path)) as cluster:
        async with cluster.client() as rpc:
            leader = await cluster.wait_leader(rpc)
            late = next(i for i in cluster.ids if i != leader)
            cluster.members[late].kill()  # it will catch up by InstallSnapshot
            kv = KvClient(rpc, [cluster.addresses[leader]], timeout=30)
            await kv.open()
            revs = [int((await kv.put(b"s/%03d" % n, b"v")).revision) for n in range(100)]
            cluster.start(late)
            await _snapshot_indexes(cluster, rpc, 80)
            revs.append(int((await kv.put(b"s/last", b"v")).revision))  # applies compact
            snaps = await _snapshot_indexes(cluster, rpc, 80)
            for i in cluster.ids:
                only_i = KvClient(rpc, [cluster.addresses[i]], timeout=30)
                with pytest.raises(EventsCompacted) as info:
                    await _collect(only_i.watch(b"s/", 1, wait_s=1.0), 1)
                floor = info.value.floor
                assert floor % 40 == 0 and 80 <= floor <= snaps[i], (i, floor, snaps)
                rest = [r for r in revs if r > floor]
                got = await _collect(only_i.watch(b"s/", floor + 1, wait_s=1.0), len(rest))
                assert [ev.index for ev in got] == rest, f"member {i}"
            # the late member's state (and so its event log) came from a snapshot
            assert "installed (state replaced: True)" in cluster.members[late].log_text()
