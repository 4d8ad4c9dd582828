"""`ddfs bench fs` (tools/bench_fs.py) run with tiny sizes on two temporary folders:
the JSON keys, the table, the progress lines, cleanup, and the arguments it refuses.
Speed is never asserted: a benchmark is a program, not a test."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
from pathlib import Path

import pytest

from tools import bench_fs
from tools.cli import UserError

KEYS = {"seq_write_mb_s", "seq_read_mb_s", "create_per_s", "stat_per_s", "unlink_per_s"}


def bench_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_fs.add_arguments(parser)
    for name in ("m", "l"):
        (tmp_path / name).mkdir(exist_ok=True)
    return parser.parse_args(["--mount", str(tmp_path / "m"), "--local", str(tmp_path / "l"),
                              "--size", "300K", "--block", "64K", "--files", "25",
                              "--no-drop-caches", *extra])


def test_json_has_both_sides_and_nothing_is_left_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_fs.run(bench_args(tmp_path, "--json")) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result.keys() >= KEYS and {f"local_{k}" for k in KEYS} <= result.keys()
    assert all(result[k] > 0 and result[f"local_{k}"] > 0 for k in KEYS)
    assert result["size_bytes"] == 300 << 10 and result["block_bytes"] == 64 << 10
    assert result["files"] == 25 and result["caches_dropped"] is False
    assert result["mount_fstype"] == result["local_fstype"] != "?"
    # stderr is not a terminal here: one line per finished phase, five per side.
    lines = err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("ddfs: sequential write")
    assert lines[5].startswith("local: sequential write") and "\r" not in err
    assert list((tmp_path / "m").iterdir()) == [] and list((tmp_path / "l").iterdir()) == []


def test_table_and_plot_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    png = tmp_path / "p.png"
    assert bench_fs.run(bench_args(tmp_path, "--plot", str(png))) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert "300 KiB file in 64 KiB blocks, 25 files" in rows[0] and "NO" in rows[0]
    assert rows[1].startswith(f"mount: {tmp_path / 'm'} (") and f"local: {tmp_path / 'l'} (" in (
        rows[1])
    assert [r.split()[0] for r in rows[3:]] == ["sequential", "sequential", "create", "stat",
                                                "unlink"]
    assert all(r.endswith("%") for r in rows[3:])
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in err and not png.exists()
    else:
        assert png.stat().st_size > 0


def test_a_block_read_back_wrong_is_an_error(tmp_path: Path) -> None:
    w = bench_fs.Workload(size=5000, block=1000, files=1, drop_caches=False)
    quiet = bench_fs.Progress(io.StringIO())
    pattern = bytes(range(256)) * 4
    path = tmp_path / "f"
    bench_fs.seq_write(path, w, pattern, quiet)
    assert path.stat().st_size == 5000
    bench_fs.seq_read(path, w, pattern, quiet)
    with path.open("r+b") as f:
        f.seek(3500)
        f.write(b"\xff")
    with pytest.raises(UserError, match="block 3"):
        bench_fs.seq_read(path, w, pattern, quiet)


def test_sizes_and_bad_arguments(tmp_path: Path) -> None:
    assert bench_fs.parse_size("1G") == 1 << 30
    assert bench_fs.parse_size("64KiB") == bench_fs.parse_size("64k") == 65536
    assert bench_fs.parse_size("1.5m") == 3 << 19 and bench_fs.parse_size("4096") == 4096
    for bad in ("lots", "1X", "-1M", ""):
        with pytest.raises(UserError, match="size"):
            bench_fs.parse_size(bad)
    with pytest.raises(UserError, match="--files"):
        bench_fs.run(bench_args(tmp_path, "--files", "0"))
    args = bench_args(tmp_path)
    args.mount = tmp_path / "missing"
    with pytest.raises(UserError, match="not a directory"):
        bench_fs.run(args)


def test_fstype_is_the_innermost_mount() -> None:
    assert bench_fs.fstype_of(Path("/proc/self")) == "proc"
    assert bench_fs.fstype_of(Path("/")) != "proc"
