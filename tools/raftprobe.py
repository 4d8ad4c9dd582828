"""A development probe for the Raft/KV write path (not a benchmark of record):
`python -m tools.raftprobe [--clients 64] [--seconds 5] [--op write|read]
[--profile DIR]`.

Starts three `ddfs meta` members the way `ddfs bench raft` does, drives
only ddfs with the benchmark's own load loop (tools/bench_raft_load), in
this process, and prints throughput, p50/p99 and the CPU time per operation
of each process (leader, followers, this load generator) from /proc. CPU
per operation is what decides throughput on a saturated 2-core machine and
moves far less with other jobs' noise than wall-clock rates do, so it is the
figure to compare before and after a change. `--profile DIR` records each
member with py-spy (if installed) during the measured phase.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from tools.bench_raft_load import DdfsTarget, _prefill, run_phase
from tools.proclaunch import LocalMetaCluster, ProcessGroup

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, part: str = "both") -> float:
    """User + system (or only one of them) CPU seconds of every thread of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    return {"user": user, "sys": system, "both": user + system}[part] / _TICK


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


async def _leader(status_call: Any, endpoints: list[str]) -> int:
    from coord.raft.rpc import RaftStatus
    for _ in range(100):
        for i, address in enumerate(endpoints, start=1):
            reply = await status_call(address, RaftStatus(), timeout=5.0)
            st = json.loads(reply.json)
            if st.get("role") == "leader":
                return i
        await trio.sleep(0.1)
    raise RuntimeError("no leader")


async def _run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    from tools.common import rpc_client

    group = ProcessGroup()
    spies: list[subprocess.Popen[bytes]] = []
    try:
        secret = secrets.token_hex(16)
        secret_file = base / "secret"
        secret_file.write_text(secret + "\n")
        meta = LocalMetaCluster(group, base, secret_file, 3, election_timeout=1.0,
                                extra_args=("--session-ttl", "86400", *args.meta_arg))
        await meta.start(timeout=60)
        value = b"v" * args.value_size
        async with AsyncExitStack() as stack:
            target = await DdfsTarget.connect(meta.endpoints, secret.encode(), args.clients, stack)
            status_rpc = await stack.enter_async_context(rpc_client(secret.encode(), role="probe"))
            leader = await _leader(status_rpc.call, meta.endpoints)
            await _prefill(target, args.clients, value)
            pids = {f"meta{i}" + ("*" if i == leader else ""): p.popen.pid
                    for i, p in meta.members.items() if p.popen is not None}
            pids["load"] = os.getpid()
            fs0 = await target.fsyncs()
            await run_phase(target, args.op, args.clients, 0.0, 1.0, value)  # warm-up
            if args.profile and shutil.which("py-spy"):
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                for name, pid in pids.items():
                    if name != "load":
                        spies.append(subprocess.Popen(
                            ["py-spy", "record", "-p", str(pid), "-d", str(int(args.seconds)),
                             "-f", args.format,
                             "-o", f"{args.profile}/{name.strip('*')}.{args.format}", "-r", "200",
                             *(["--gil"] if args.gil else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            cpu0 = {n: _cpu_seconds(p) for n, p in pids.items()}
            sys0 = {n: _cpu_seconds(p, "sys") for n, p in pids.items()}
            thr0 = {n: _thread_cpu(p) for n, p in pids.items()}
            res = await run_phase(target, args.op, args.clients, args.seconds, 0.0, value)
            cpu1 = {n: _cpu_seconds(p) for n, p in pids.items()}
            sys1 = {n: _cpu_seconds(p, "sys") for n, p in pids.items()}
            thr1 = {n: _thread_cpu(p) for n, p in pids.items()}
            fs1 = await target.fsyncs()
            for spy in spies:
                spy.wait(timeout=60)
        summary = res.summary()
        ops = max(1, res.ops)
        return {
            "op": args.op, "clients": args.clients, **summary,
            "cpu_ms_per_op": {n: round((cpu1[n] - cpu0[n]) * 1e3 / ops, 4) for n in pids},
            "sys_ms_per_op": {n: round((sys1[n] - sys0[n]) * 1e3 / ops, 4) for n in pids},
            "thread_ms_per_op": {
                n: {t: round((v - thr0[n].get(t, 0.0)) * 1e3 / ops, 4)
                    for t, v in thr1[n].items() if v - thr0[n].get(t, 0.0) > 0}
                for n in pids},
            "cpu_ms_per_op_total": round(sum(cpu1[n] - cpu0[n] for n in pids) * 1e3 / ops, 4),
            "fsyncs_per_op": round((fs1 - fs0) / ops, 3),
            "loadavg_1m": os.getloadavg()[0],
        }
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
        group.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.raftprobe")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--op", choices=("write", "read"), default="write")
    parser.add_argument("--value-size", type=int, default=256)
    parser.add_argument("--profile", default="")
    parser.add_argument("--format", choices=("raw", "flamegraph", "speedscope"), default="raw")
    parser.add_argument("--gil", action="store_true")
    parser.add_argument("--meta-arg", action="append", default=[],
                        help="extra argument for every `ddfs meta` (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ddfs-probe-") as tmp:
        out = trio.run(_run, args, Path(tmp))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
