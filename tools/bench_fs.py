"""`ddfs bench fs`: sequential I/O and metadata rates on a mount, next to a local disk.

    ddfs bench fs --mount M [--size 1G] [--files 10000] [--local DIR] [--block 1M]
                  [--no-drop-caches] [--json] [--plot FILE]

The same workloads run on the mount (in a fresh folder under M) and on a
local-disk folder (a fresh folder under --local, default a temporary folder
on the root file system), in that order, in one run:

1. sequential write of one --size file in --block writes, fsync, close;
2. drop the kernel's caches (`sync; echo 3 > /proc/sys/vm/drop_caches`: the
   page cache of FUSE files is dropped too), then read it back in --block
   reads, each block checked against what was written (a fast wrong answer
   is never reported);
3. create --files empty files in one folder (open O_CREAT|O_EXCL, close);
4. drop the caches again (every stat then reaches the file system: a FUSE
   LOOKUP, or the local disk's inode blocks), stat each file;
5. unlink each file.

MB is 10**6 bytes; rates are per second of wall time, Python loop included
(the same loop on both sides).  A progress bar goes to stderr (one line per
phase when stderr is not a terminal); the table, or with --json one object,
to stdout.  Invariants: every folder this creates is removed (finally), on
both sides, also when a workload fails; without root (or with
--no-drop-caches) nothing is dropped and the result says so
(`caches_dropped: false`).  Nothing here asserts speed; benchmarks are
programs, not tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from tools.cli import UserError

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
# (key, label, unit) of each figure, in table order.
METRICS = (
    ("seq_write_mb_s", "sequential write", "MB/s"),
    ("seq_read_mb_s", "sequential read", "MB/s"),
    ("create_per_s", "create", "files/s"),
    ("stat_per_s", "stat", "files/s"),
    ("unlink_per_s", "unlink", "files/s"),
)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_STAMP = struct.Struct("<Q")  # block index written into each block's first bytes
REDRAW_SECONDS = 0.1  # the bar is redrawn at most this often


@dataclass(frozen=True, slots=True)
class Figures:
    """One side's results (rates; see METRICS)."""

    seq_write_mb_s: float
    seq_read_mb_s: float
    create_per_s: float
    stat_per_s: float
    unlink_per_s: float


@dataclass(frozen=True, slots=True)
class Workload:
    size: int  # bytes of the sequential file
    block: int  # bytes per write(2)/read(2)
    files: int  # files created, stat'ed, unlinked
    drop_caches: bool  # try to drop the kernel's caches before reads and stats


def parse_size(text: str) -> int:
    """'1G', '512M', '64KiB', '1.5g', '4096' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise UserError(f"size {text!r}: expected a number with an optional K, M, G or T")
    return int(float(match[1]) * _UNITS[match[2].lower()])


# --- progress --------------------------------------------------------------------------------


class Progress:
    """A bar on a terminal, redrawn at most every REDRAW_SECONDS; on anything else one
    line per finished phase (logs stay readable)."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.label = ""
        self.total = 1
        self.drawn_at = 0.0  # time.monotonic() of the last redraw

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.drawn_at = label, max(total, 1), 0.0
        self.update(0)

    def update(self, done: int) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.drawn_at < REDRAW_SECONDS and done < self.total:
            return
        self.drawn_at = now
        filled = self.width * min(done, self.total) // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label:<28} [{bar}] {100 * done // self.total:3d}%")
        self.stream.flush()

    def finish(self, summary: str) -> None:
        if self.tty:  # over the bar, padded to cover it
            self.stream.write(f"\r{self.label:<28} {summary:<{self.width + 7}}\n")
        else:
            self.stream.write(f"{self.label:<28} {summary}\n")
        self.stream.flush()


# --- workloads -------------------------------------------------------------------------------


def drop_caches(wanted: bool) -> bool:
    """sync, then drop the page cache, dentries and inodes (all file systems, FUSE
    included); False if not wanted or not allowed."""
    if not wanted:
        return False
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def _block(pattern: bytes, index: int) -> bytes:
    return _STAMP.pack(index) + pattern[_STAMP.size:]


def seq_write(path: Path, w: Workload, pattern: bytes, progress: Progress) -> float:
    """Seconds to write `w.size` bytes in blocks, fsync and close."""
    blocks = -(-w.size // w.block)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(blocks):
            data = _block(pattern, i)[: min(w.block, w.size - i * w.block)]
            view = memoryview(data)
            while view:  # bounded: each write makes progress or raises
                view = view[os.write(fd, view):]
            progress.update(i + 1)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def seq_read(path: Path, w: Workload, pattern: bytes, progress: Progress) -> float:
    """Seconds to read the file back; every block is checked."""
    blocks = -(-w.size // w.block)
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(blocks):
            want = min(w.block, w.size - i * w.block)
            got = os.read(fd, want)
            while len(got) < want:  # bounded: a short read of 0 bytes ends it below
                more = os.read(fd, want - len(got))
                if not more:
                    break
                got += more
            if got != _block(pattern, i)[:want]:
                raise UserError(f"{path}: block {i} read back wrong ({len(got)} bytes)")
            progress.update(i + 1)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def _names(folder: Path, count: int) -> Iterator[tuple[int, str]]:
    for i in range(count):
        yield i, os.path.join(folder, f"f{i:07d}")


def create_files(folder: Path, count: int, progress: Progress) -> float:
    start = time.perf_counter()
    for i, name in _names(folder, count):
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        progress.update(i + 1)
    return time.perf_counter() - start


def stat_files(folder: Path, count: int, progress: Progress) -> float:
    start = time.perf_counter()
    for i, name in _names(folder, count):
        os.stat(name)
        progress.update(i + 1)
    return time.perf_counter() - start


def unlink_files(folder: Path, count: int, progress: Progress) -> float:
    start = time.perf_counter()
    for i, name in _names(folder, count):
        os.unlink(name)
        progress.update(i + 1)
    return time.perf_counter() - start


def run_suite(folder: Path, side: str, w: Workload, progress: Progress) -> tuple[Figures, bool]:
    """All workloads in `folder` (which this call empties again); (figures, caches dropped)."""
    pattern = os.urandom(w.block)
    blocks = -(-w.size // w.block)
    big = folder / "seq"
    mb = w.size / 1e6

    progress.start(f"{side}: sequential write", blocks)
    write = mb / seq_write(big, w, pattern, progress)
    progress.finish(f"{write:,.1f} MB/s")
    dropped = drop_caches(w.drop_caches)
    progress.start(f"{side}: sequential read", blocks)
    read = mb / seq_read(big, w, pattern, progress)
    progress.finish(f"{read:,.1f} MB/s")
    big.unlink()
    files = folder / "files"
    files.mkdir()
    rates = []
    for label, step in (("create", create_files), ("stat", stat_files),
                        ("unlink", unlink_files)):
        if step is stat_files:
            dropped = drop_caches(w.drop_caches) and dropped
        progress.start(f"{side}: {label}", w.files)
        rates.append(w.files / step(files, w.files, progress))
        progress.finish(f"{rates[-1]:,.0f} files/s")
    files.rmdir()
    return Figures(write, read, rates[0], rates[1], rates[2]), dropped


# --- where --------------------------------------------------------------------------------------


def fstype_of(path: Path) -> str:
    """The type of the file system holding `path` (the longest mount point above it)."""
    target = os.path.realpath(path)
    best, fstype = "", "?"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split()[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best) and right:
            best, fstype = point, right.split()[0]
    return fstype


def default_local() -> Path:
    """A folder on the root file system for the baseline (not a tmpfs /tmp)."""
    root = os.stat("/").st_dev
    for candidate in ("/var/tmp", "/tmp", "/root", "/"):
        with contextlib.suppress(OSError):
            if os.stat(candidate).st_dev == root and os.access(candidate, os.W_OK):
                return Path(candidate)
    raise UserError("no writable folder on the root file system: pass --local DIR")


@contextlib.contextmanager
def work_folder(parent: Path) -> Iterator[Path]:
    """A fresh folder under `parent`, removed afterwards whatever happens."""
    if not parent.is_dir():
        raise UserError(f"{parent}: not a directory")
    try:
        folder = Path(tempfile.mkdtemp(prefix=".ddfs-bench-", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot create a folder in {parent}: {exc.strerror}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_space(parent: Path, size: int) -> None:
    st = os.statvfs(parent)
    if st.f_bavail * st.f_frsize < size + (64 << 20):
        raise UserError(f"{parent}: less than {size / 1e9 + 0.064:.2f} GB free for the test")


# --- output -------------------------------------------------------------------------------------


def result_object(args: argparse.Namespace, w: Workload, ours: Figures, local: Figures,
                  dropped: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mount": str(args.mount), "mount_fstype": fstype_of(args.mount),
        "local": str(args.local), "local_fstype": fstype_of(args.local),
        "size_bytes": w.size, "block_bytes": w.block, "files": w.files,
        "caches_dropped": dropped,
    }
    for key, value in asdict(ours).items():
        out[key] = round(value, 1)
    for key, value in asdict(local).items():
        out[f"local_{key}"] = round(value, 1)
    for key, _, _ in METRICS:
        base = out[f"local_{key}"]
        # three significant digits: metadata ratios can be far below 1%
        out[f"ratio_{key}"] = float(f"{out[key] / base:.3g}") if base else None
    return out


def percent(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.0%}" if ratio >= 0.1 else f"{ratio * 100:.2g}%"


def human(size: int) -> str:
    """1073741824 -> '1 GiB', 307200 -> '300 KiB' (the largest unit that keeps 1 or more)."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:,.4g} {unit}"
    return f"{size} bytes"


def print_table(result: dict[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    print(f"ddfs bench fs: {human(result['size_bytes'])} file in "
          f"{human(result['block_bytes'])} blocks, "
          f"{result['files']:,} files; caches dropped before reads and stats: "
          f"{'yes' if result['caches_dropped'] else 'NO'}", file=stream)
    print(f"mount: {result['mount']} ({result['mount_fstype']}); "
          f"local: {result['local']} ({result['local_fstype']})", file=stream)
    print(f"{'':24} {'mount':>12} {'local':>12} {'mount/local':>12}", file=stream)
    for key, label, unit in METRICS:
        print(f"{label + ' ' + unit:24} {result[key]:>12,.1f} {result['local_' + key]:>12,.1f}"
              f" {percent(result[f'ratio_{key}']):>12}", file=stream)


def plot(result: dict[str, Any], path: Path) -> str | None:
    """Bar charts (ddfs vs local) into `path`; the reason if none could be drawn."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return "matplotlib is not installed: no plot written (pip install matplotlib)"
    matplotlib.use("Agg")  # no display needed
    plt = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, unit in ((axes[0], METRICS[:2], "MB/s"), (axes[1], METRICS[2:], "files/s")):
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [result[k] for k, _, _ in keys], 0.4, label="ddfs")
        ax.bar([x + 0.2 for x in xs], [result[f"local_{k}"] for k, _, _ in keys], 0.4,
               label=f"local ({result['local_fstype']})")
        ax.set_xticks(list(xs), [label for _, label, _ in keys])
        ax.set_ylabel(unit)
        ax.legend()
    fig.suptitle(f"ddfs bench fs: {human(result['size_bytes'])}, {result['files']} files")
    fig.tight_layout()
    fig.savefig(path)
    return None


# --- entry point --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mount", type=Path, required=True, metavar="M",
                        help="the mount to measure (a folder is created and removed in it)")
    parser.add_argument("--size", default="1G", help="sequential file size (default 1G)")
    parser.add_argument("--block", default="1M", help="bytes per read/write (default 1M)")
    parser.add_argument("--files", type=int, default=10_000, help="files to create/stat/unlink")
    parser.add_argument("--local", type=Path, metavar="DIR",
                        help="baseline folder (default: a temporary folder on the root fs)")
    parser.add_argument("--no-drop-caches", action="store_true",
                        help="do not drop the kernel's caches before reads and stats")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="bar charts (matplotlib)")


def workload_of(args: argparse.Namespace) -> Workload:
    w = Workload(parse_size(args.size), parse_size(args.block), args.files,
                 not args.no_drop_caches)
    if w.size < 1 or not 1 <= w.block <= 64 << 20 or w.files < 1:
        raise UserError("--size and --files must be at least 1, --block within 1..64M")
    return w


def run(args: argparse.Namespace) -> int:
    w = workload_of(args)
    args.local = args.local or default_local()
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        print("ddfs bench fs: --plot: matplotlib is not installed; the run goes on without "
              "a plot", file=sys.stderr)
    for parent in (args.mount, args.local):
        if not Path(parent).is_dir():
            raise UserError(f"{parent}: not a directory")
        _check_space(parent, w.size)
    progress = Progress(sys.stderr)
    with work_folder(args.mount) as there:
        ours, dropped = run_suite(there, "ddfs", w, progress)
    with work_folder(args.local) as here:
        local, dropped_local = run_suite(here, "local", w, progress)
    result = result_object(args, w, ours, local, dropped and dropped_local)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print_table(result)
    if args.plot is not None:
        failed = plot(result, args.plot)
        print(f"ddfs bench fs: {failed}" if failed else f"plot written to {args.plot}",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_fs",
                                     description="file-system benchmark: a mount vs local disk")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as exc:
        print(f"ddfs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
