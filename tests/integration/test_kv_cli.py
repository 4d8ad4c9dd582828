"""`ddfs kv` and `ddfs raft status` against a real 3-member cluster, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.meta_cluster import MetaCluster, meta_cluster
from tests.support.processes import ROOT, ddfs_argv


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetaCluster]:
    with meta_cluster(tmp_path_factory.mktemp("kvcli"), 3) as c:
        yield c


def ddfs(
    cluster: MetaCluster, *args: str, secret: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DDFS_ENDPOINTS": ",".join(cluster.endpoints),
           "DDFS_SECRET_FILE": str(secret or cluster.secret_file)}
    return subprocess.run(ddfs_argv(*args), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_put_get_del(cluster: MetaCluster) -> None:
    assert ddfs(cluster, "kv", "put", "greeting", "hello world").stdout == "OK\n"
    assert ddfs(cluster, "kv", "get", "greeting").stdout == "greeting\nhello world\n"
    assert ddfs(cluster, "kv", "del", "greeting").stdout == "1\n"
    assert ddfs(cluster, "kv", "get", "greeting").stdout == ""
    assert ddfs(cluster, "kv", "del", "greeting").stdout == "0\n"


def test_cas_succeeds_only_on_the_expected_value(cluster: MetaCluster) -> None:
    assert ddfs(cluster, "kv", "cas", "lock", "", "me").stdout == "OK\n"  # "" = absent
    failed = ddfs(cluster, "kv", "cas", "lock", "", "you")
    assert (failed.stdout, failed.returncode) == ("FAILED\n", 1)
    assert ddfs(cluster, "kv", "cas", "lock", "me", "you").stdout == "OK\n"
    assert ddfs(cluster, "kv", "get", "lock").stdout == "lock\nyou\n"


def test_range_lists_keys_in_order(cluster: MetaCluster) -> None:
    for k in ("r/b", "r/a", "r/c", "s/x"):
        ddfs(cluster, "kv", "put", k, k.upper())
    out = ddfs(cluster, "kv", "range", "r/", "r0").stdout.split("\n")
    assert out[:-1] == ["r/a", "R/A", "r/b", "R/B", "r/c", "R/C"]
    first = ddfs(cluster, "kv", "range", "r/", "r0", "--limit", "1").stdout
    assert first == "r/a\nR/A\n"


def test_txn_runs_then_or_else(cluster: MetaCluster) -> None:
    ddfs(cluster, "kv", "put", "t1", "a")
    ok = ddfs(cluster, "kv", "txn", "--if", "value(t1) = a", "--if", "version(t1) > 0",
              "--then", "put t1 b", "--then", "put t2 x", "--else", "get t1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "SUCCEEDED"
    no = ddfs(cluster, "kv", "txn", "--if", "value(t1) = a", "--then", "put t1 c",
              "--else", "get t1")
    assert no.returncode == 1
    assert no.stdout.splitlines() == ["FAILED", "get: b"]
    assert ddfs(cluster, "kv", "get", "t2").stdout == "t2\nx\n"


def test_bad_txn_syntax_is_a_clear_error(cluster: MetaCluster) -> None:
    out = ddfs(cluster, "kv", "txn", "--if", "size(k) = 1")
    assert out.returncode == 2
    assert "bad compare" in out.stderr


def test_raft_status_shows_one_leader_and_the_followers_lag(cluster: MetaCluster) -> None:
    out = ddfs(cluster, "raft", "status", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["id"] for r in rows) == [1, 2, 3]
    leaders = [r for r in rows if r["role"] == "leader"]
    assert len(leaders) == 1
    assert all(r["leader"] == leaders[0]["id"] for r in rows)
    assert set(leaders[0]["lag"]) == {str(i) for i in (1, 2, 3)} - {str(leaders[0]["id"])}
    # Same machine, same clock: the measured skew is within its error bound of 0.
    assert all(abs(r["clock_offset_ms"]) <= r["clock_error_ms"] + 1.0 for r in rows)
    table = ddfs(cluster, "raft", "status").stdout
    assert "leader" in table and "follower" in table


def test_wrong_secret_is_refused_with_a_clear_error(cluster: MetaCluster, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret\n")
    out = ddfs(cluster, "kv", "get", "x", secret=wrong)
    assert out.returncode == 2
    assert "secret" in out.stderr.lower()
    assert "Traceback" not in out.stderr


def test_missing_secret_is_a_clear_error(cluster: MetaCluster, tmp_path: Path) -> None:
    out = ddfs(cluster, "kv", "get", "x", secret=tmp_path / "missing")
    assert out.returncode == 2
    assert "cannot read the cluster secret" in out.stderr


def test_no_reachable_member_fails_within_the_timeout_without_a_traceback(tmp_path: Path) -> None:
    from tests.support.processes import free_ports

    secret = tmp_path / "secret"
    secret.write_text("s\n")
    env = {**os.environ, "DDFS_ENDPOINTS": f"127.0.0.1:{free_ports(1)[0]}",
           "DDFS_SECRET_FILE": str(secret)}
    out = subprocess.run(ddfs_argv("kv", "--timeout", "1", "put", "k", "v"), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert "no member answered within 1 s" in out.stderr
    assert "Traceback" not in out.stderr


async def test_an_idle_session_expires_by_log_time_and_is_never_re_executed(
    tmp_path: Path,
) -> None:
    import trio

    from coord.kv.remote import KvClient, SessionExpired

    with meta_cluster(tmp_path, 3, extra_args=("--session-ttl", "1")) as c:
        async with c.client() as rpc:
            idle = KvClient(rpc, c.endpoints, timeout=10)
            busy = KvClient(rpc, c.endpoints, timeout=10)
            await idle.open()
            await busy.open()
            await idle.put(b"idle", b"1")
            # Log time only moves with entries: the busy client keeps it moving.
            for n in range(12):
                await busy.put(b"busy", b"%d" % n)
                await trio.sleep(0.2)
            with pytest.raises(SessionExpired):
                await idle.put(b"idle", b"2")
            found = await busy.get(b"idle")
            assert found is not None and found.value == b"1"  # the refused put never ran
