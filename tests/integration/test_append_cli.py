"""`ddfs append`: several processes append lines to one ddfs file at once on a
real local cluster (`ddfs cluster up --no-mount`); every line each printed an
offset for is in the file, whole, at that offset; nothing else is in it but
zeros; a bad path is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from fs.client import FsClientConfig, connect
from fs.types import ROOT_CRED, ROOT_INODE
from tests.integration.test_cluster_cmd import ROOT, cluster_dir, ddfs, pids, up
from tools import clusterconf

WRITERS = 3
LINES = 40


def lines_of(writer: int) -> list[bytes]:
    return [b"writer %d line %03d %s\n" % (writer, k, b"x" * (k * 7 % 50))
            for k in range(LINES)]


async def read_file(config: clusterconf.ClusterConfig, name: bytes) -> bytes:
    client = FsClientConfig(meta_endpoints=tuple(config.endpoints), op_timeout=30.0)
    async with connect(client, clusterconf.read_secret(config)) as fs:
        attr = await fs.lookup(ROOT_INODE, name, ROOT_CRED)
        fh = await fs.open(attr.inode, os.O_RDONLY, ROOT_CRED)
        try:
            return await fs.read(fh, 0, attr.size)
        finally:
            await fs.release(fh)


def test_concurrent_appenders_from_the_command_line(tmp_path: Path) -> None:
    base = tmp_path / "c"
    with cluster_dir(base) as seen:
        out = up(base, "--no-mount")
        seen.update(pids(base))
        assert out.returncode == 0, out.stdout + out.stderr
        procs = [subprocess.Popen(
            [sys.executable, "-m", "tools", "append", "/log", "--lines", "--create",
             "--dir", str(base)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE) for _ in range(WRITERS)]
        outputs = []
        try:
            for w, proc in enumerate(procs):
                assert proc.stdin is not None
                proc.stdin.write(b"".join(lines_of(w)))
                proc.stdin.close()
            for proc in procs:  # the outputs are small: the pipes never fill
                proc.wait(timeout=240)
                assert proc.stdout is not None and proc.stderr is not None
                assert proc.returncode == 0, proc.stderr.read().decode()
                outputs.append(proc.stdout.read().decode())
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
        data = trio.run(read_file, clusterconf.load(base / clusterconf.CONFIG_NAME), b"log")
        for w, printed in enumerate(outputs):
            placed = [tuple(map(int, line.split())) for line in printed.splitlines()]
            assert len(placed) == LINES
            for (offset, length), line in zip(placed, lines_of(w), strict=True):
                assert data[offset:offset + length] == line
        # Nothing but the lines (the O_CREAT race may lose no line) and NUL padding.
        kept = sorted(line for line in data.replace(b"\0", b"").splitlines(keepends=True))
        assert kept == sorted(line for w in range(WRITERS) for line in lines_of(w))

        bad = ddfs("append", "log", "--dir", str(base))
        assert bad.returncode == 2 and "absolute path" in bad.stderr
        missing = ddfs("append", "/nope", "--dir", str(base))
        assert missing.returncode == 1 and "No such file" in missing.stderr
