"""`mount -t fuse.ddfs` and /etc/fstab lines, through util-linux's mount(8) and the
`mount.fuse.ddfs` helper (tools/mount_helper.py).

The translation of sources and options is tested as a function; then real
mounts: a memfs mount through `mount -t` (kernel options reach the mount
table), errors reported by mount(8), and a real cluster (`ddfs cluster up
--no-mount` in a temporary folder) mounted by its cluster-file path, by its
metadata endpoints with `secret_file=` and `ro`, and from a temporary fstab
with `mount -a -T` (twice: the second is a no-op) and `mount -T F M` for a
`noauto` line.  Plain `umount M` ends every mount, and its serving process.

The helper must be where mount(8) looks (/sbin/mount.fuse.ddfs): the module
installs it if it is missing and removes it afterwards (a helper already
installed by ddfs is used and left alone; a foreign one skips the real-mount
tests).  The real /etc/fstab is never touched.  Every mount, serving process
and cluster daemon is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lossyfs.control import is_mounted, unmount_lazily
from tools import clusterconf, daemons, mount_helper
from tools.cli import UserError
from tools.mount_helper import HelperRequest, HelperUsageError, parse_helper_argv, plan

ROOT = Path(__file__).resolve().parents[2]
EXIT_TIMEOUT = 20.0  # seconds for a serving process to exit after its unmount


# --- translation (no mounts) ---------------------------------------------------------------------


def cluster_file(tmp_path: Path, extra_args: tuple[str, ...] = (), mode: str = "remote") -> Path:
    config = clusterconf.ClusterConfig(
        name="t", secret_file=tmp_path / "secret",
        meta=(clusterconf.MetaMember(1, "127.0.0.1:7001", tmp_path / "m1"),),
        chunks=(clusterconf.ChunkMember(1, "127.0.0.1:7101", tmp_path / "c1"),),
        mount=clusterconf.MountOptions(mode=mode, extra_args=extra_args),
    )
    return clusterconf.save(config, tmp_path / "cluster.toml").path or tmp_path


def test_helper_argv_as_mount_8_passes_it() -> None:
    req = parse_helper_argv(["src", "/mnt/x", "-v", "-o", "rw,config=/a\\,b,_netdev", "-sn"])
    assert req == HelperRequest("src", "/mnt/x", ("rw", "config=/a,b", "_netdev"),
                                fake=False, verbose=True, sloppy=True)
    assert parse_helper_argv(["-f", "s", "m", "-ort", "-t", "fuse.ddfs"]).options == ("rt",)
    for bad, message in [(["s"], "usage"), (["s", "m", "-t", "fuse.sshfs"], "fuse.sshfs"),
                         (["s", "m", "-N", "/proc/1/ns/mnt"], "-N"), (["s", "m", "-o"], "-o"),
                         (["s", "m", "-q"], "-q")]:
        with pytest.raises(HelperUsageError, match=message):
            parse_helper_argv(bad)


def test_sources_and_options_become_a_ddfs_mount_command_line(tmp_path: Path) -> None:
    eps = "127.0.0.1:7001,localhost:7002"
    got = plan(HelperRequest(eps, "m", ("defaults", "_netdev", "nofail", "x-systemd.after=a",
                                        "secret_file=s", "ro", "noexec", "allow_other",
                                        "noatime", "attr_timeout=2.5", "mode=cache",
                                        "op_timeout=10", "read_ahead_kb=-1")))
    assert got.argv == ("--meta", eps, "--secret-file", os.path.abspath("s"), "--mode", "cache",
                        "--attr-timeout", "2.5", "--op-timeout", "10", "--read-ahead-kb", "-1",
                        "-o", "ro,noexec,suid,dev", os.path.abspath("m"))
    assert got.ignored == ("defaults", "_netdev", "nofail", "x-systemd.after=a")
    # suid and dev are mount(8)'s defaults (it never passes them): asked for unless refused.
    assert plan(HelperRequest("memfs", "/m", ("nodev",))).argv == (
        "--backend", "memfs", "-o", "nodev,suid", "/m")
    assert plan(HelperRequest("memfs", "/m", ("nosuid", "nodev"))).argv == (
        "--backend", "memfs", "-o", "nosuid,nodev", "/m")


def test_a_cluster_file_is_the_source_or_config_and_its_mount_table_applies(
    tmp_path: Path,
) -> None:
    path = cluster_file(tmp_path, extra_args=("--op-timeout", "7"), mode="cache")
    by_path = plan(HelperRequest(str(path), "/m", ("mode=remote",))).argv
    by_label = plan(HelperRequest("ddfs", "/m", (f"config={path}", "mode=remote"))).argv
    # [mount] first, so the options of the mount command line override it.
    expected = ("--op-timeout", "7", "--mode", "cache", "--config", str(path), "--mode",
                "remote", "-o", "suid,dev", "/m")
    assert by_path == by_label == expected
    with pytest.raises(HelperUsageError, match="different cluster files"):
        plan(HelperRequest(str(path), "/m", (f"config={tmp_path}/other.toml",)))
    with pytest.raises(UserError, match="cannot read"):
        plan(HelperRequest("ddfs", "/m", (f"config={tmp_path}/missing.toml",)))


@pytest.mark.parametrize(("source", "options", "message"), [
    ("ddfs", (), "config=FILE"),
    ("host:port", (), "host:port"),
    ("memfs", ("bogus",), "unknown option 'bogus'"),
    ("memfs", ("secretfile=x",), "unknown option"),
    ("memfs", ("relatime",), "always noatime"),
    ("memfs", ("fsname=x",), "`ddfs`"),
    ("memfs", ("max_read=4096",), "max_read"),
    ("memfs", ("mode=fast",), "remote, cache"),
    ("memfs", ("attr_timeout=soon",), "not a number"),
    ("memfs", ("read_ahead_kb=1.5",), "not a number"),
    ("memfs", ("config=",), "needs a value"),
])
def test_bad_sources_and_options_are_refused_by_name(
    source: str, options: tuple[str, ...], message: str,
) -> None:
    with pytest.raises(HelperUsageError, match=message):
        plan(HelperRequest(source, "/m", options))


def test_sloppy_turns_unknown_options_into_warnings(caplog: pytest.LogCaptureFixture) -> None:
    got = plan(HelperRequest("memfs", "/m", ("bogus", "ro"), sloppy=True))
    assert got.argv == ("--backend", "memfs", "-o", "ro,suid,dev", "/m")
    assert got.ignored == ("bogus",)
    assert "bogus" in caplog.text


def test_install_show_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = mount_helper.install(tmp_path)
    assert target == tmp_path / "mount.fuse.ddfs" and os.access(target, os.X_OK)
    assert mount_helper.is_ours(target)
    assert mount_helper.install(tmp_path) == target  # again: replaces its own
    # The installed program runs from anywhere (-f: plan and print, do not mount).
    done = subprocess.run([str(target), "memfs", "/nowhere", "-f", "-o", "ro,_netdev"],
                          cwd="/", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "ddfs mount --backend memfs -o ro,suid,dev /nowhere" in done.stderr
    assert "ignored: _netdev" in done.stderr
    mount_helper.run(mount_helper_args("show", tmp_path))
    assert str(target) in capsys.readouterr().out
    assert mount_helper.uninstall(tmp_path) and not target.exists()
    assert not mount_helper.uninstall(tmp_path)
    target.write_text("#!/bin/sh\necho someone else's\n")
    with pytest.raises(UserError, match="not installed by ddfs"):
        mount_helper.install(tmp_path)
    with pytest.raises(UserError, match="not installed by ddfs"):
        mount_helper.uninstall(tmp_path)
    assert mount_helper.install(tmp_path, force=True) == target and mount_helper.is_ours(target)


def test_install_links_to_the_console_script_when_pip_made_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "venv-bin" / "mount.fuse.ddfs"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(mount_helper, "console_script", lambda: script)
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    target = mount_helper.install(sbin)
    assert target.is_symlink() and os.readlink(target) == str(script)
    assert mount_helper.is_ours(target)
    assert mount_helper.uninstall(sbin) and not target.is_symlink() and script.exists()


def mount_helper_args(action: str, directory: Path) -> argparse.Namespace:
    return argparse.Namespace(action=action, dir=directory, force=False)


# --- real mounts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helper() -> Iterator[Path]:
    """/sbin/mount.fuse.ddfs for the module's duration."""
    target = mount_helper.DEFAULT_DIR / mount_helper.HELPER_NAME
    existed = target.exists() or target.is_symlink()
    if existed and not mount_helper.is_ours(target):
        pytest.skip(f"{target} exists and is not ddfs's")
    if not existed:
        mount_helper.install()
    try:
        yield target
    finally:
        if not existed:
            mount_helper.uninstall()


def serving_pids(mountpoint: Path) -> list[int]:
    """Processes started by the helper for `mountpoint` (their argv names both)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if (str(mountpoint).encode() in argv
                        and any(b"mount_helper" in a or b"mount.fuse.ddfs" in a for a in argv)):
                    found.append(int(entry))
    return found


def wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    while any(daemons.start_time(p) is not None for p in pids):
        assert time.monotonic() < deadline, f"serving processes {pids} outlived the unmount"
        time.sleep(0.05)


@contextlib.contextmanager
def mountpoints(base: Path, *names: str) -> Iterator[list[Path]]:
    """Empty folders; whatever is mounted on them, and serves them, is gone afterwards."""
    points = [base / n for n in names]
    for p in points:
        p.mkdir()
    try:
        yield points
    finally:
        for p in points:
            pids = serving_pids(p)
            while is_mounted(p):  # bounded: each round detaches one stacked mount
                unmount_lazily(p)
            with contextlib.suppress(AssertionError):
                wait_gone(pids)
            for pid in serving_pids(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def mount8(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=90,
                          check=False, cwd="/")


def umount8(point: Path) -> None:
    """`umount M` (as root: umount2), then the serving process must exit."""
    pids = serving_pids(point)
    assert pids, f"no serving process for {point}"
    done = subprocess.run(["umount", str(point)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(point)
    wait_gone(pids)


def mount_entries(point: Path) -> list[str]:
    """The mountinfo lines of `point`: "options - fstype source superoptions"."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(point):
            out.append(" ".join(fields[5:]))
    return out


def test_mount_t_memfs_passes_kernel_options_and_umount_ends_it(
    helper: Path, tmp_path: Path,
) -> None:
    with mountpoints(tmp_path, "m") as [point]:
        done = mount8("-t", "fuse.ddfs", "memfs", str(point),
                      "-o", "defaults,_netdev,noexec,nosuid,sync,allow_other")
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""  # helpers are silent on success
        [entry] = mount_entries(point)
        assert "fuse.ddfs ddfs" in entry
        per_mount = entry.split(" - ")[0].split()[0].split(",")
        assert {"noexec", "nosuid", "noatime"} <= set(per_mount) and "nodev" not in per_mount
        assert "sync" in entry.split(" - ")[1] and "allow_other" in entry
        (point / "f").write_text("through mount -t")
        assert (point / "f").read_text() == "through mount -t"
        umount8(point)


@pytest.mark.parametrize(("source", "options", "message"), [
    ("ddfs", "defaults", "config=FILE"),
    ("memfs", "bogus=1", "unknown option"),
    ("/nonexistent/cluster.toml", "defaults", "cannot read"),
])
def test_mount_8_reports_helper_errors_in_one_line(
    helper: Path, tmp_path: Path, source: str, options: str, message: str,
) -> None:
    with mountpoints(tmp_path, "m") as [point]:
        done = mount8("-t", "fuse.ddfs", source, str(point), "-o", options)
        assert done.returncode != 0
        assert message in done.stderr and "Traceback" not in done.stderr
        assert not is_mounted(point)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[clusterconf.ClusterConfig]:
    """A 3 + 3 cluster of daemons, not mounted; stopped (then killed by verified pid)."""
    base = tmp_path_factory.mktemp("cluster")
    seen: dict[str, tuple[int, int]] = {}
    try:
        up = ddfs("cluster", "up", "--no-mount", "--dir", str(base), "--timeout", "40")
        for f in (base / "run").glob("*.pid"):
            record = daemons.read_record(f)
            if record is not None:
                seen[f.stem] = record
        assert up.returncode == 0, up.stdout + up.stderr
        yield clusterconf.load(base / clusterconf.CONFIG_NAME)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            ddfs("cluster", "down", "--dir", str(base), "--timeout", "5")
        for pid, started in seen.values():
            if daemons.start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def ddfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)


def test_cluster_by_config_path_and_by_endpoints_read_only(
    helper: Path, cluster: clusterconf.ClusterConfig, tmp_path: Path,
) -> None:
    assert cluster.path is not None
    log = tmp_path / "mount.log"
    with mountpoints(tmp_path, "rw", "ro") as [rw, ro]:
        done = mount8("-t", "fuse.ddfs", str(cluster.path), str(rw),
                      "-o", f"_netdev,log_file={log},attr_timeout=0.5")
        assert done.returncode == 0, done.stderr
        (rw / "file").write_bytes(b"x" * 100_000)
        again = mount8("-t", "fuse.ddfs", str(cluster.path), str(rw))
        assert again.returncode == 32 and "already mounted" in again.stderr
        assert len(mount_entries(rw)) == 1
        endpoints = ",".join(cluster.endpoints)
        done = mount8("-t", "fuse.ddfs", endpoints, str(ro),
                      "-o", f"ro,secret_file={cluster.secret_file}")
        assert done.returncode == 0, done.stderr
        assert (ro / "file").read_bytes() == b"x" * 100_000  # the same file system
        with pytest.raises(OSError, match="Read-only"):
            (ro / "new").write_text("refused")
        umount8(ro)
        umount8(rw)
        assert "unmounted" in log.read_text()


def test_fstab_with_mount_a_and_a_noauto_line(
    helper: Path, cluster: clusterconf.ClusterConfig, tmp_path: Path,
) -> None:
    with mountpoints(tmp_path, "auto", "manual") as [auto, manual]:
        fstab = tmp_path / "fstab"
        fstab.write_text(
            "# a test fstab: the real /etc/fstab is never used\n"
            f"ddfs {auto} fuse.ddfs defaults,_netdev,nofail,config={cluster.path} 0 0\n"
            f"ddfs {manual} fuse.ddfs noauto,_netdev,config={cluster.path},mode=cache,ro 0 0\n"
        )
        done = mount8("-a", "-T", str(fstab))
        assert done.returncode == 0, done.stderr
        assert len(mount_entries(auto)) == 1 and not is_mounted(manual)
        # `ddfs` is what the mount table shows, so mount(8) knows the line is mounted.
        done = mount8("-a", "-T", str(fstab), "-v")
        assert done.returncode == 0, done.stderr
        assert "already mounted" in done.stdout and len(mount_entries(auto)) == 1
        (auto / "via-fstab").write_text("fstab")
        done = mount8("-T", str(fstab), str(manual))
        assert done.returncode == 0, done.stderr
        assert (manual / "via-fstab").read_text() == "fstab"
        assert mount_entries(manual)[0].startswith("ro,")
        umount8(manual)
        umount8(auto)
