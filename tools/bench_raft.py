"""`ddfs bench raft`: ddfs's replicated KV store against etcd on the same machine.

    ddfs bench raft [--seconds S] [--rounds R] [--clients N] [--json]

Starts three etcd members (Debian's `etcd-server`; fsync on, which is etcd's
default; own temporary data folders; loopback) and three `ddfs meta`
processes over TCP, then one load generator in its own process
(`tools/bench_raft_load.py`) that drives both with N (default 64) keep-alive
connections and 256-byte values, phases interleaved A B A B: committed
writes with 1 and N callers, linearizable reads with N callers.  Reported:
writes/s and p50/p99 latency per phase, reads/s, and `fsyncs_per_s`, the
durable commits of the ddfs members' Raft logs (counted by
`coord/raft/lmdb_store.py`, read through `raft.status`) per second of ddfs
write phases, all three members together.

If etcd measures below 80 % of the reference figures of this kind of
machine (docs/benchmarks.md: 880 writes/s with 1 client, 3,300 with 64),
the baseline is broken and the output says so: the comparison is then not
worth much.

Invariants: every process started (6 servers, the load generator) is
started through `tools.proclaunch` (they die with this process, even on
SIGKILL) and killed in a `finally`; the temporary folder is removed.
Nothing here asserts speed: a benchmark reports, tests judge.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.proclaunch import LocalMetaCluster, NotReady, Proc, ProcessGroup, free_ports

# etcd 3.4 on this kind of machine (shared/FACTS.md): the baseline's floor is 80 % of it.
ETCD_REF_WRITES_1 = 880.0
ETCD_REF_WRITES_64 = 3300.0
BASELINE_FRACTION = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measured seconds of each phase (default 5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="unmeasured seconds before each phase (default: seconds/5, max 1)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (A B per phase each round; default 3)")
    parser.add_argument("--clients", type=int, default=64,
                        help="connections of the many-client phases (default 64)")
    parser.add_argument("--value-size", type=int, default=256, help="bytes per value")
    parser.add_argument("--etcd", default=None,
                        help="the etcd binary (default: `etcd` on PATH, else /usr/bin/etcd)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data and logs here instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _etcd_binary(args: argparse.Namespace) -> str:
    from tools.cli import UserError

    found = args.etcd or shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(found, os.X_OK):
        raise UserError(f"no etcd binary at {found}: install Debian's etcd-server "
                        "(tools/setup.sh does)")
    return found


def _etcd_procs(group: ProcessGroup, base: Path, binary: str) -> list[tuple[Proc, str]]:
    """Three etcd members on 127.0.0.1 with the default durability (fsync per commit),
    each with its client address."""

    ports = free_ports(6)
    peers = {f"e{i}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}
    cluster = ",".join(f"{n}={u}" for n, u in peers.items())
    procs = []
    for i in range(3):
        name, client = f"e{i}", f"http://127.0.0.1:{ports[2 * i]}"
        argv = [
            binary, "--name", name, "--data-dir", str(base / name),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peers[name], "--initial-advertise-peer-urls", peers[name],
            "--initial-cluster", cluster, "--initial-cluster-token", f"bench-{os.getpid()}",
            "--initial-cluster-state", "new",
        ]
        procs.append((group.add(Proc(name, argv, base / f"{name}.log")),
                      client.removeprefix("http://")))
    return procs


async def _run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    group = ProcessGroup()
    try:
        etcd = _etcd_procs(group, base, _etcd_binary(args))
        secret = secrets.token_hex(16)
        secret_file = base / "secret"
        secret_file.write_text(secret + "\n")
        # Sessions must outlive the idle phases of a long run; elections must not be
        # triggered by a loaded machine's scheduling hiccups.
        meta = LocalMetaCluster(group, base, secret_file, 3, election_timeout=1.0,
                                extra_args=("--session-ttl", "86400"))
        for proc, _ in etcd:
            proc.spawn()
        await meta.start(timeout=60)
        for proc, _ in etcd:
            if not await proc.wait_for("ready to serve client requests", 60):
                raise NotReady(f"{proc.name} not ready:\n{proc.output()[-3000:]}")
        plan_path, out_path = base / "plan.json", base / "result.json"
        plan_path.write_text(json.dumps({
            "etcd": [address for _, address in etcd], "ddfs": meta.endpoints,
            "secret": secret, "clients": args.clients, "seconds": args.seconds,
            "warmup": args.warmup, "rounds": args.rounds, "value_size": args.value_size,
            "out": str(out_path),
        }))
        load = group.add(Proc("load", [sys.executable, "-m", "tools.bench_raft_load",
                                       str(plan_path)], base / "load.log"))
        load.spawn()
        budget = 120 + args.rounds * 6 * (args.seconds + args.warmup) * 2
        if not await load.wait_for("DONE", budget):
            raise NotReady(f"the load generator did not finish:\n{load.output()[-3000:]}")
        result: dict[str, Any] = json.loads(out_path.read_text())
        return result
    finally:
        group.close()


def summarise(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The flat JSON result from the load generator's pooled phases."""
    pooled = raw["pooled"]
    n = args.clients
    out: dict[str, Any] = {}
    for system in ("ddfs", "etcd"):
        w1, wn, rn = (pooled[f"{system}_write_1"], pooled[f"{system}_write_{n}"],
                      pooled[f"{system}_read_{n}"])
        out[f"{system}_writes_per_s_1"] = w1["per_s"]
        out[f"{system}_p50_ms_1"] = w1["p50_ms"]
        out[f"{system}_p99_ms_1"] = w1["p99_ms"]
        out[f"{system}_writes_per_s_64"] = wn["per_s"]
        out[f"{system}_p50_ms_64"] = wn["p50_ms"]
        out[f"{system}_p99_ms_64"] = wn["p99_ms"]
        out[f"{system}_reads_per_s_64"] = rn["per_s"]
        out[f"{system}_read_p99_ms_64"] = rn["p99_ms"]
    seconds = raw["ddfs_write_seconds"]
    out["fsyncs_per_s"] = raw["fsyncs"] / seconds if seconds else 0.0
    out["write_ratio_64"] = _ratio(out["ddfs_writes_per_s_64"], out["etcd_writes_per_s_64"])
    out["p50_ratio_1"] = _ratio(out["ddfs_p50_ms_1"], out["etcd_p50_ms_1"])
    out["etcd_baseline_ok"] = (
        out["etcd_writes_per_s_1"] >= BASELINE_FRACTION * ETCD_REF_WRITES_1
        and out["etcd_writes_per_s_64"] >= BASELINE_FRACTION * ETCD_REF_WRITES_64
    )
    out["rounds"] = [
        {name: round(ph["per_s"], 1) for name, ph in r.items()} for r in raw["rounds"]
    ]
    out.update(clients=n, seconds=args.seconds, warmup=args.warmup, rounds_run=args.rounds,
               value_size=args.value_size, loadavg_1m=os.getloadavg()[0])
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _print_table(res: dict[str, Any]) -> None:
    n = res["clients"]
    rows = [
        ("writes/s, 1 client", "writes_per_s_1", ".0f"),
        ("  p50 ms", "p50_ms_1", ".2f"),
        ("  p99 ms", "p99_ms_1", ".2f"),
        (f"writes/s, {n} clients", "writes_per_s_64", ".0f"),
        ("  p50 ms", "p50_ms_64", ".2f"),
        ("  p99 ms", "p99_ms_64", ".2f"),
        (f"linearizable reads/s, {n} clients", "reads_per_s_64", ".0f"),
        ("  p99 ms", "read_p99_ms_64", ".2f"),
    ]
    print(f"{'':36} {'ddfs':>10} {'etcd':>10} {'ddfs/etcd':>10}")
    for label, key, fmt in rows:
        d, e = res[f"ddfs_{key}"], res[f"etcd_{key}"]
        print(f"{label:36} {d:10{fmt}} {e:10{fmt}} {_ratio(d, e):10.2f}")
    print(f"ddfs Raft-log fsyncs/s (3 members, write phases): {res['fsyncs_per_s']:.0f}")
    print(f"{res['rounds_run']} interleaved rounds of {res['seconds']:g} s per phase; "
          f"load average {res['loadavg_1m']:.2f}")


def run(args: argparse.Namespace) -> int:
    import trio

    from tools.cli import UserError

    if args.seconds <= 0 or args.rounds < 1 or args.clients < 1 or args.value_size < 1:
        raise UserError("--seconds must be positive; --rounds, --clients, --value-size >= 1")
    if args.warmup is None:
        args.warmup = min(1.0, args.seconds / 5)
    _etcd_binary(args)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        raw = trio.run(_run, args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="ddfs-bench-raft-") as tmp:
            raw = trio.run(_run, args, Path(tmp))
    res = summarise(raw, args)
    if args.json:
        print(json.dumps(res))
    else:
        _print_table(res)
    if not res["etcd_baseline_ok"]:
        print(f"ddfs bench raft: the etcd baseline is broken: it measured "
              f"{res['etcd_writes_per_s_1']:.0f} writes/s with 1 client and "
              f"{res['etcd_writes_per_s_64']:.0f} with {res['clients']}, below "
              f"{BASELINE_FRACTION:.0%} of the reference ({ETCD_REF_WRITES_1:.0f} and "
              f"{ETCD_REF_WRITES_64:.0f}); the machine is too busy for a fair comparison",
              file=sys.stderr)
    return 0
