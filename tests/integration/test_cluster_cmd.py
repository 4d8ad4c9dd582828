"""`ddfs cluster up/down` as a user runs them, and the pieces under them:
the one-file configuration (tools/clusterconf.py) and verified pid files
(tools/daemons.py).

The lifecycle test drives one real cluster (3 `ddfs meta`, 3 `ddfs chunk`,
a FUSE mount of the networked client) through: up without the mount, up
again (a no-op), a chunk server killed and restarted by up, a mount that
cannot start (reported, exit 1, servers left up), the mount, a crash of
everything that leaves the FUSE mount dead, down, down again, and up again
with the file's contents back and fsck clean.  Every process it starts is
stopped in `finally`, whatever happens (down, then SIGKILL by verified pid,
then a lazy unmount).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tools import clusterconf, daemons
from tools.cli import UserError
from tools.cluster import Layout, all_specs

ROOT = Path(__file__).resolve().parents[2]


def ddfs(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def layout(base: Path) -> Layout:
    return Layout(base, base / clusterconf.CONFIG_NAME)


def pids(base: Path) -> dict[str, tuple[int, int]]:
    """name -> (pid, start time) of every daemon with a pid file."""
    out = {}
    for f in sorted((base / "run").glob("*.pid")):
        record = daemons.read_record(f)
        if record is not None:
            out[f.stem] = record
    return out


def live(base: Path) -> dict[str, int]:
    return {name: pid for name, (pid, started) in pids(base).items()
            if daemons.start_time(pid) == started}


def force_down(base: Path, seen: dict[str, tuple[int, int]]) -> None:
    """Whatever happened: `ddfs cluster down`, then SIGKILL every daemon this test
    saw (verified by start time), then a lazy unmount of the mount point."""
    if (base / clusterconf.CONFIG_NAME).exists():
        with suppress(subprocess.TimeoutExpired):
            ddfs("cluster", "down", "--dir", str(base), "--timeout", "5", timeout=60)
    for pid, started in {**seen, **pids(base)}.values():
        if daemons.start_time(pid) == started:
            with suppress(ProcessLookupError):
                os.kill(pid, 9)
    mnt = base / "mnt"
    if daemons.mount_state(mnt) is not daemons.MountState.ABSENT:
        daemons.unmount(mnt, lazy=True)


@contextmanager
def cluster_dir(base: Path) -> Iterator[dict[str, tuple[int, int]]]:
    """Yields a dict the test adds every pid record it sees to; cleans up after."""
    seen: dict[str, tuple[int, int]] = {}
    try:
        yield seen
    finally:
        force_down(base, seen)


def up(base: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return ddfs("cluster", "up", "--dir", str(base), "--timeout", "40", *extra)


def status(base: Path) -> dict[str, object]:
    out = ddfs("status", "--dir", str(base), "--json")
    assert out.returncode in (0, 1), out.stderr
    parsed: dict[str, object] = json.loads(out.stdout)
    return parsed


# --- the configuration file ------------------------------------------------------------------

SAMPLE = """
cluster = "prod"
secret_file = "/etc/ddfs/secret"
replicas = 3

[meta.1]
address = "10.0.0.1:7001"
data = "/var/lib/ddfs/meta"
[meta.2]
address = "10.0.0.2:7001"
data = "/var/lib/ddfs/meta"
[meta.3]
address = "10.0.0.3:7001"

[chunk.7]
address = "10.0.1.1:7101"
data = "chunks"
listen = "0.0.0.0:7101"

[mount]
mountpoint = "/mnt/ddfs"
options = ["noexec"]

[raft]
election_timeout_min = 0.5
election_timeout_max = 1.0
"""


def test_config_format_reads_resolves_and_writes_back(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(SAMPLE)
    config = clusterconf.load(path)
    assert config.name == "prod" and config.replicas == 3
    assert [m.id for m in config.meta] == [1, 2, 3]
    assert config.meta[2].data == tmp_path / "meta3"  # default data folder, relative
    assert config.chunks[0].data == tmp_path / "chunks"
    assert config.chunks[0].bind == "0.0.0.0:7101" and config.chunks[0].address == "10.0.1.1:7101"
    assert config.mount.mountpoint == Path("/mnt/ddfs") and config.mount.options == ("noexec",)
    again_path = tmp_path / "again.toml"
    clusterconf.save(config, again_path)
    assert clusterconf.load(again_path) == clusterconf.load(path).__class__(
        **{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "path": again_path})


@pytest.mark.parametrize("bad, message", [
    ("[meta.1]\naddress='a:1'\n[meta.2]\naddress='a:2'\n[chunk.1]\naddress='a:3'\n", "odd"),
    ("[meta.1]\naddress='a:1'\n", r"\[chunk.N\] tables are required"),
    ("[meta.1]\naddress='a:1'\n[chunk.1]\naddress='a:1'\n", "distinct"),
    ("[meta.x]\naddress='a:1'\n[chunk.1]\naddress='a:2'\n", "numeric"),
    ("[meta.1]\naddress='nope'\n[chunk.1]\naddress='a:2'\n", "nope"),
    ("[meta.1]\naddress='a:1'\n[chunk.1]\naddress='a:2'\n[mount]\nmode='x'\n", "mode"),
])
def test_config_errors_are_one_line_user_errors(tmp_path: Path, bad: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(bad)
    with pytest.raises(UserError, match=message):
        clusterconf.load(path)


def test_role_command_lines_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(SAMPLE)
    config = clusterconf.load(path)
    # `ddfs meta --config F --id N` reads the same file (tools/meta.py).
    assert clusterconf.meta_argv(config, 2)[-4:] == ["--config", str(path), "--id", "2"]
    import tomllib
    keys = clusterconf.meta_keys(tomllib.loads(SAMPLE), path, 2)
    assert keys["members"] == {"1": "10.0.0.1:7001", "2": "10.0.0.2:7001", "3": "10.0.0.3:7001"}
    assert keys["data"] == "/var/lib/ddfs/meta" and keys["raft"]["election_timeout_min"] == 0.5
    chunk = clusterconf.chunk_argv(config, 7)
    assert chunk[chunk.index("--listen") + 1] == "0.0.0.0:7101"
    assert chunk[chunk.index("--advertise") + 1] == "10.0.1.1:7101"
    with pytest.raises(UserError, match=r"no \[chunk.8\]"):
        clusterconf.chunk_argv(config, 8)
    # The fill-ins for `ddfs chunk --config` / `ddfs mount --config`.
    args = argparse.Namespace(config=path, id=7, listen=None, advertise="", data=None,
                              meta=None, secret_file=None)
    clusterconf.fill_chunk_args(args)
    assert (args.listen, args.advertise, args.data) == (
        "0.0.0.0:7101", "10.0.1.1:7101", tmp_path / "chunks")
    assert args.meta == "10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001"
    margs = argparse.Namespace(config=path, meta=None, secret_file=None, options=["ro"])
    clusterconf.fill_mount_args(margs)
    assert margs.options == ["noexec", "ro"] and margs.secret_file == "/etc/ddfs/secret"


# --- pid files ---------------------------------------------------------------------------------


def test_pid_files_name_only_the_process_that_wrote_them(tmp_path: Path) -> None:
    spec = daemons.DaemonSpec("sleeper", ("sleep", "30"), tmp_path / "run", tmp_path / "logs")
    pid = daemons.start(spec)
    try:
        assert daemons.running_pid(spec.pid_file) == pid
        assert os.getsid(pid) == pid  # its own session: no terminal, no signals from ours
        record = daemons.read_record(spec.pid_file)
        assert record is not None
        # A pid file whose start time does not match (the pid was reused) names nobody,
        # and stopping through it signals nobody.
        spec.pid_file.write_text(f"{pid} {record[1] + 1}\n")
        assert daemons.running_pid(spec.pid_file) is None
        assert daemons.stop([spec], timeout=1.0) == {"sleeper": daemons.Stopped.NOT_RUNNING}
        assert daemons.start_time(pid) == record[1]  # still alive
        assert not spec.pid_file.exists()
        spec.pid_file.write_text(f"{pid} {record[1]}\n")
        assert daemons.stop([spec], timeout=5.0) == {"sleeper": daemons.Stopped.TERMINATED}
        assert daemons.start_time(pid) is None and not spec.pid_file.exists()
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, 9)
        daemons.reap(pid)


def test_stop_kills_a_daemon_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    spec = daemons.DaemonSpec("stubborn", (sys.executable, "-c", code), tmp_path / "run",
                              tmp_path / "logs")
    pid = daemons.start(spec)
    try:
        time.sleep(0.3)  # let it install its handler
        assert daemons.stop([spec], timeout=0.5) == {"stubborn": daemons.Stopped.KILLED}
        assert daemons.start_time(pid) is None
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, 9)
        daemons.reap(pid)


# --- the lifecycle -----------------------------------------------------------------------------


def _check_status(base: Path) -> None:
    st = status(base)
    members = st["members"]
    assert isinstance(members, list) and len(members) == 3
    assert sum(1 for m in members if m.get("role") == "leader") == 1
    servers = st["chunk_servers"]
    assert isinstance(servers, list) and len(servers) == 3
    assert all(s["alive"] and s["capacity"] > 0 for s in servers), servers


def _assert_mount_usable(mnt: Path) -> None:
    assert daemons.mount_state(mnt) is daemons.MountState.MOUNTED
    assert os.stat(mnt).st_dev != os.stat(mnt.parent).st_dev


def _crash_everything(base: Path, mnt: Path) -> None:
    for spec in all_specs(layout(base), clusterconf.load(base / clusterconf.CONFIG_NAME)):
        daemons.kill(spec)  # SIGKILL; the pid files stay behind, stale
    with pytest.raises(OSError) as exc:
        os.statvfs(mnt)  # (stat may still be answered from the attribute cache)
    assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert daemons.mount_state(mnt) is daemons.MountState.DEAD


def _set_mount_options(base: Path, *options: str) -> None:
    from dataclasses import replace

    path = base / clusterconf.CONFIG_NAME
    config = clusterconf.load(path)
    clusterconf.save(replace(config, mount=replace(config.mount, options=options)), path)


def test_cluster_lifecycle(tmp_path: Path) -> None:
    base = tmp_path / "c"
    mnt = base / "mnt"
    data = os.urandom(3 << 20)
    with cluster_dir(base) as seen:
        first = up(base, "--no-mount")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "leader: meta" in first.stdout and "chunk servers alive: 3/3" in first.stdout
        assert "mount    skipped (--no-mount)" in first.stdout
        assert (base / "secret").stat().st_mode & 0o777 == 0o600
        seen.update(pids(base))
        running = live(base)
        assert sorted(running) == ["chunk1", "chunk2", "chunk3", "meta1", "meta2", "meta3"]
        _check_status(base)
        config_text = (base / clusterconf.CONFIG_NAME).read_text()

        again = up(base, "--no-mount")  # a no-op: everything is running
        assert again.returncode == 0 and "started" not in again.stdout, again.stdout
        assert live(base) == running
        assert (base / clusterconf.CONFIG_NAME).read_text() == config_text  # ports kept

        _restart_a_killed_chunk_server(base, running, seen)
        _a_failing_mount_is_reported(base, mnt, seen)

        mounted = up(base)
        assert mounted.returncode == 0, mounted.stdout + mounted.stderr
        assert f"ready: {mnt}" in mounted.stdout
        seen.update(pids(base))
        _assert_mount_usable(mnt)
        (mnt / "dir").mkdir()
        (mnt / "dir" / "file").write_bytes(data)
        noop = up(base)
        assert noop.returncode == 0 and "started" not in noop.stdout, noop.stdout
        assert "mount    " in noop.stdout and "mounted (pid" in noop.stdout

        _crash_everything(base, mnt)
        recovered = up(base)
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        assert "was dead" in recovered.stdout and "ready:" in recovered.stdout
        seen.update(pids(base))
        _assert_mount_usable(mnt)
        assert (mnt / "dir" / "file").read_bytes() == data  # written, closed: survived
        _check_status(base)

        _down_and_up_again(base, mnt, seen, data)


def _restart_a_killed_chunk_server(base: Path, running: dict[str, int],
                                   seen: dict[str, tuple[int, int]]) -> None:
    spec = next(s for s in all_specs(layout(base), clusterconf.load(
        base / clusterconf.CONFIG_NAME)) if s.name == "chunk2")
    assert daemons.kill(spec)
    restarted = up(base, "--no-mount")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "chunk2   started" in restarted.stdout
    seen.update(pids(base))
    now = live(base)
    assert now["chunk2"] != running["chunk2"]
    assert {k: v for k, v in now.items() if k != "chunk2"} == {
        k: v for k, v in running.items() if k != "chunk2"}
    _check_status(base)


def _a_failing_mount_is_reported(base: Path, mnt: Path,
                                 seen: dict[str, tuple[int, int]]) -> None:
    """A mount that cannot start (here: an option ddfs refuses): exit status 1, the
    reason, the servers still up, and nothing left mounted or running for it."""
    _set_mount_options(base, "fsname=mine")
    out = up(base)
    seen.update(pids(base))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "mount    FAILED" in out.stdout and "fsname" in out.stdout
    assert "--no-mount" in out.stdout
    assert daemons.mount_state(mnt) is daemons.MountState.ABSENT
    assert "mount" not in live(base) and len(live(base)) == 6
    _set_mount_options(base)


def _down_and_up_again(base: Path, mnt: Path, seen: dict[str, tuple[int, int]],
                       data: bytes) -> None:
    down = ddfs("cluster", "down", "--dir", str(base))
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"mount    {mnt} unmounted" in down.stdout, down.stdout
    assert down.stdout.rstrip().endswith("down")
    assert not list((base / "run").glob("*.pid"))
    for name, (pid, started) in seen.items():
        assert daemons.start_time(pid) != started, f"{name} (pid {pid}) still running"
    assert daemons.mount_state(mnt) is daemons.MountState.ABSENT
    twice = ddfs("cluster", "down", "--dir", str(base))
    assert twice.returncode == 0 and "not running" in twice.stdout

    back = up(base)
    assert back.returncode == 0, back.stdout + back.stderr
    seen.update(pids(base))
    assert (mnt / "dir" / "file").read_bytes() == data  # the data folders persisted
    fsck = ddfs("fsck", "--dir", str(base))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_down_without_a_cluster_is_a_clear_error(tmp_path: Path) -> None:
    out = ddfs("cluster", "down", "--dir", str(tmp_path / "none"))
    assert out.returncode == 2 and "no cluster configuration" in out.stderr
