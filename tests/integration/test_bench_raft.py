"""`ddfs bench raft` end to end with a tiny duration: three etcd members, three
`ddfs meta` processes and the load generator really run; the JSON has every
key the issue asks for with positive values, and no process is left behind.
Speed is never asserted (a benchmark is a program, not a test).  Needs
Debian's etcd-server, which tools/setup.sh installs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KEYS = {
    "ddfs_writes_per_s_64", "etcd_writes_per_s_64", "ddfs_p50_ms_1", "etcd_p50_ms_1",
    "ddfs_p99_ms_64", "ddfs_reads_per_s_64", "etcd_reads_per_s_64", "fsyncs_per_s",
    "ddfs_writes_per_s_1", "etcd_writes_per_s_1",
}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


def test_bench_raft_json_end_to_end(tmp_path: Path) -> None:
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        pytest.fail("etcd is not installed: run tools/setup.sh (it installs etcd-server)")
    work = tmp_path / "work"
    argv = [sys.executable, "-m", "tools", "bench", "raft", "--seconds", "0.4",
            "--warmup", "0.1", "--rounds", "1", "--clients", "4", "--workdir", str(work),
            "--json"]
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result.keys() >= KEYS
        for key in KEYS:
            assert result[key] > 0, (key, result)
        assert result["clients"] == 4 and result["rounds_run"] == 1
        assert len(result["rounds"]) == 1
        # Both systems ran every phase of the round.
        assert set(result["rounds"][0]) == {
            f"{s}_{op}_{n}" for s in ("ddfs", "etcd") for op, n in
            (("write", 1), ("write", 4), ("read", 4))
        }
        # The etcd members really ran with their own data folders, under our workdir.
        assert all((work / f"e{i}" / "member").is_dir() for i in range(3))
    finally:
        leftovers = _processes_mentioning(str(work))
        for line in leftovers:  # never leave a process behind, even when failing
            os.kill(int(line.split(":")[0]), 9)
    assert leftovers == []
