"""`ddfs coord run mutex`: one mutual-exclusion algorithm across real processes on 127.0.0.1.

    ddfs coord run mutex --algo centralized|ricart-agrawala|token-ring --nodes 5
                         [--entries K] [--kill NODE] [--hold S] [--timeout S] [--keep DIR]
                         [--json]

It starts N node processes (`python -m tools.coordrun_mutex node ...`, each
with its own trace file) and, in this process, the protected resource (a
fencing guard with an audit, coord.mutex.resource).  Every node then enters
the lock K times in a row, continuously (enter the resource with its token,
hold --hold seconds, exit).  With `--kill NODE` (e.g. 5 or n5) that node is
SIGKILLed once a third of all entries are done; the run still has to finish
(every surviving node completes its K entries).

Output: entries, protocol messages by kind, messages per entry, resource
audit (safety violations, stale tokens refused), and the Lamport-ordered trace
as a Mermaid sequence diagram.  `--json` prints one object (keys: algo,
nodes, entries, messages, messages_by_kind, messages_per_entry,
safety_violations, stale_rejected, killed, finished, seconds, idle_token_passes,
election_messages, heartbeats, mermaid, trace).

The centralized coordinator and the ring's token regenerator are chosen by a
Bully election (coord.election) unless `--no-election`.

Counting: heartbeats (failure detection) and the election's messages are
not mutual-exclusion messages and are reported apart.  For the token ring,
only the work window counts - from the pass that brought the first entry to
the last exit; passes outside it (the token circulating before anyone asked
and after everyone finished) are reported as `idle_token_passes`.

Exit status: 0 when every surviving node finished and the audit found no
violation, 1 otherwise, 2 on usage errors.  Every process is stopped at the
end (errors and Ctrl-C included; children die with this process: proclaunch).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coord.trace import TraceEvent
    from tools.proclaunch import ProcessGroup

ALGORITHMS = ("centralized", "ricart-agrawala", "token-ring")
ELECTION_KINDS = ("ELECTION", "OK", "COORDINATOR")  # the Bully election's, counted apart
SECRET = b"ddfs-coord-run-mutex"
log = logging.getLogger("ddfs.coordrun.mutex")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", required=True, choices=ALGORITHMS)
    parser.add_argument("--nodes", type=int, default=5, help="processes (2..9, default 5)")
    parser.add_argument("--entries", type=int, default=3, help="entries per node (default 3)")
    parser.add_argument("--kill", metavar="NODE", help="SIGKILL this node (1..N or nN) mid-run")
    parser.add_argument("--hold", type=float, default=0.005,
                        help="seconds inside the critical section (default 0.005)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds the run may take (default 60)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep logs and traces in DIR")
    parser.add_argument("--no-election", action="store_true",
                        help="centralized/ring: take the highest trusted id as coordinator "
                             "instead of running the Bully election")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _victim(args: argparse.Namespace) -> int | None:
    from tools.cli import UserError

    if not 2 <= args.nodes <= 9:
        raise UserError("--nodes must be 2..9")
    if not 1 <= args.entries <= 1000:
        raise UserError("--entries must be 1..1000")
    if args.kill is None:
        return None
    text = str(args.kill).removeprefix("n")
    if not text.isdigit() or not 1 <= int(text) <= args.nodes:
        raise UserError(f"--kill must name a node 1..{args.nodes} (or n1..n{args.nodes})")
    return int(text)


def run(args: argparse.Namespace) -> int:
    import trio

    from tools.proclaunch import ProcessGroup

    victim = _victim(args)
    group = ProcessGroup()
    with ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="ddfs-mutex-")))
        base.mkdir(parents=True, exist_ok=True)
        stack.callback(group.close)  # before the temporary folder goes (LIFO)
        result = trio.run(run_mutex, args.algo, args.nodes, args.entries, victim, base, group,
                          args.hold, args.timeout, not args.no_election)
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0 if result["finished"] and result["safety_violations"] == 0 else 1


async def run_mutex(algo: str, nodes: int, entries: int, victim: int | None, base: Path,
                    group: ProcessGroup, hold: float = 0.005,
                    timeout: float = 60.0, elect: bool = True) -> dict[str, Any]:
    """Start the nodes and the resource, run the workload, stop everything, report."""
    import trio

    from coord.mutex.node import serve_resource
    from coord.mutex.resource import ProtectedResource
    from tools.common import rpc_client

    resource = ProtectedResource()
    procs, addresses = _spawn(algo, nodes, base, group, elect)
    started = time.monotonic()
    try:
        for proc in procs.values():
            await proc.start_wait()
        # The client outlives the nursery: it must not be closed inside a cancelled scope.
        async with rpc_client(SECRET, "coordrun") as rpc, trio.open_nursery() as nursery:
            res_address = await nursery.start(serve_resource, SECRET, resource)
            finished, killed = await _workload(rpc, addresses, procs, res_address,
                                               entries, victim, hold, timeout)
            statuses = await _statuses(rpc, addresses)
            nursery.cancel_scope.cancel()
    finally:
        group.close()
    traces = _read_traces(base, nodes)
    return _report(algo, nodes, traces, statuses, resource, finished, killed,
                   time.monotonic() - started)


class _NodeProc:
    """A node process and how to wait for it to be ready."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc

    async def start_wait(self) -> None:
        if not await self.proc.wait_for("ready on", 30.0):
            raise RuntimeError(f"{self.proc.name} did not start:\n{self.proc.output()}")


def _spawn(algo: str, n: int, base: Path, group: ProcessGroup,
           elect: bool) -> tuple[dict[int, _NodeProc], dict[int, str]]:
    from tools.proclaunch import Proc, free_ports

    secret_file = base / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    ports = free_ports(n)
    addresses = {i: f"127.0.0.1:{ports[i - 1]}" for i in range(1, n + 1)}
    members = ",".join(f"{i}={a}" for i, a in addresses.items())
    procs = {}
    for i in addresses:
        argv = [sys.executable, "-m", "tools.coordrun_mutex", "node", "--id", str(i),
                "--algo", algo, "--nodes", members, "--data", str(base / f"n{i}"),
                "--secret-file", str(secret_file)] + ([] if elect else ["--no-election"])
        proc = group.add(Proc(f"n{i}", argv, base / f"n{i}.out"))
        proc.spawn()
        procs[i] = _NodeProc(proc)
    return procs, addresses


async def _workload(rpc: Any, addresses: dict[int, str], procs: dict[int, _NodeProc],
                    resource: str, entries: int, victim: int | None, hold: float,
                    timeout: float) -> tuple[bool, int | None]:
    import trio

    from coord.mutex.node import Work
    from coord.rpc import RpcError

    async def start(address: str) -> None:
        try:
            await rpc.call(address, Work(entries, resource, hold), timeout=5.0)
        except RpcError as exc:
            log.warning("work for %s: %s", address, exc)

    async with trio.open_nursery() as nursery:
        for address in addresses.values():
            nursery.start_soon(start, address)
    killed = None
    deadline = trio.current_time() + timeout
    while trio.current_time() < deadline:
        statuses = await _statuses(rpc, addresses)
        done = sum(s.entries for s in statuses.values() if s is not None)
        if victim is not None and killed is None and done * 3 >= entries * len(addresses):
            procs[victim].proc.kill()
            killed = victim
            continue
        alive = [i for i in addresses if i != killed]
        if all(statuses.get(i) is not None and statuses[i].done for i in alive):
            return True, killed
        await trio.sleep(0.05)
    return False, killed


async def _statuses(rpc: Any, addresses: dict[int, str]) -> dict[int, Any]:
    from coord.mutex.node import Status
    from coord.rpc import RpcError

    out: dict[int, Any] = {}
    for i, address in addresses.items():
        try:
            out[i] = await rpc.call(address, Status(), timeout=1.0)
        except RpcError:  # a node we cannot ask counts as silent
            out[i] = None
    return out


def _read_traces(base: Path, n: int) -> list[TraceEvent]:
    from coord.trace import read_jsonl

    events = []
    for i in range(1, n + 1):
        events += read_jsonl(base / f"n{i}" / "trace.jsonl")
    return events


def count_messages(events: Sequence[TraceEvent]) -> dict[str, int]:
    """Mutual-exclusion messages sent, by kind (the election's are left out)."""
    from coord.trace import EventKind

    counts: dict[str, int] = {}
    for ev in events:
        kind = ev.label.split(" ", 1)[0]
        if ev.kind is EventKind.SEND and kind not in ELECTION_KINDS:
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _trim_ring_tail(events: Sequence[TraceEvent]) -> list[TraceEvent]:
    """The ring's work window: from the pass that brought the first entry to the last exit.

    Before it the token circulated while nobody had asked; after it, it keeps
    circulating idly.  Neither is caused by the entries, so neither is shown or counted.
    """
    from coord.trace import EventKind, lamport_order

    ordered = lamport_order(events, [f"n{i}" for i in range(1, 10)])
    notes = [(k, e) for k, e in enumerate(ordered) if e.kind is EventKind.NOTE]
    exits = [k for k, e in notes if e.label.startswith("EXIT")]
    enters = [(k, e) for k, e in notes if e.label.startswith("ENTER")]
    if not enters or not exits:
        return list(ordered)
    first, entrant = enters[0]
    start = first
    arrivals = [e for e in ordered[:first]
                if e.kind is EventKind.RECEIVE and e.node == entrant.node
                and e.label.startswith("TOKEN")]
    if arrivals:
        got = arrivals[-1]
        start = next((k for k, e in enumerate(ordered) if e.kind is EventKind.SEND
                      and e.node == got.peer and e.lamport == got.ref), first)
    return list(ordered[start: exits[-1] + 1])


def _report(algo: str, n: int, events: list[TraceEvent], statuses: dict[int, Any],
            resource: Any, finished: bool, killed: int | None,
            seconds: float) -> dict[str, Any]:
    from coord.trace import EventKind, to_mermaid

    shown = _trim_ring_tail(events) if algo == "token-ring" else events
    if algo != "token-ring":
        shown = [e for e in events if not (e.kind is EventKind.NOTE and "trusts" in e.label)]
    counts = count_messages(shown if algo == "token-ring" else events)
    idle = count_messages(events).get("TOKEN", 0) - counts.get("TOKEN", 0)
    entries = sum(1 for e in events if e.kind is EventKind.NOTE and e.label.startswith("ENTER"))
    elections = sum(1 for e in events if e.kind is EventKind.SEND
                    and e.label.split(" ", 1)[0] in ELECTION_KINDS)
    total = sum(counts.values())
    names = [f"n{i}" for i in range(1, n + 1)]
    return {
        "algo": algo, "nodes": n, "entries": entries, "messages": total,
        "messages_by_kind": counts,
        "messages_per_entry": round(total / entries, 3) if entries else None,
        "safety_violations": resource.violations, "stale_rejected": resource.stale,
        "killed": None if killed is None else f"n{killed}", "finished": finished,
        "seconds": round(seconds, 2), "idle_token_passes": idle,
        "election_messages": elections,
        "heartbeats": sum(s.heartbeats for s in statuses.values() if s is not None),
        "mermaid": to_mermaid(shown, actors=names,
                              title=f"{algo}, {n} nodes" + (f", n{killed} killed"
                                                            if killed else "")),
        "trace": [e.to_json() for e in shown],
    }


def format_text(r: dict[str, Any]) -> str:
    counts = ", ".join(f"{k}={v}" for k, v in r["messages_by_kind"].items())
    lines = [
        f"{r['algo']}: {r['nodes']} nodes, {r['entries']} entries"
        + (f", {r['killed']} killed mid-run" if r["killed"] else "")
        + f"; {'finished' if r['finished'] else 'DID NOT FINISH'} in {r['seconds']} s",
        f"messages: {counts} (total {r['messages']}, {r['messages_per_entry']} per entry; "
        f"heartbeats {r['heartbeats']} and {r['election_messages']} election messages "
        "not counted"
        + (f"; {r['idle_token_passes']} idle token passes outside the work"
           if r["algo"] == "token-ring" else "") + ")",
        f"resource: {r['safety_violations']} safety violations, "
        f"{r['stale_rejected']} stale tokens refused",
        "", "```mermaid", r["mermaid"].rstrip(), "```",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- node process


def node_main(argv: Sequence[str]) -> int:
    """`python -m tools.coordrun_mutex node ...`: one node (a child of `ddfs coord run mutex`)."""


    from coord.mutex.node import NodeConfig, serve_mutex_node
    from coord.mutex.types import NodeId

    p = argparse.ArgumentParser(prog="ddfs-mutex-node")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--algo", required=True, choices=ALGORITHMS)
    p.add_argument("--nodes", required=True, help="ID=HOST:PORT,...")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--secret-file", type=Path, required=True)
    p.add_argument("--no-election", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nodes = {NodeId(int(k)): v for k, v in (x.split("=", 1) for x in a.nodes.split(","))}
    config = NodeConfig(NodeId(a.id), a.algo, nodes, a.data,
                        a.secret_file.read_bytes().strip(), elect=not a.no_election).validate()

    from tools.coordnode import serve_until_signal

    return serve_until_signal(serve_mutex_node, config,
                              lambda address: f"ddfs mutex n{a.id}: ready on {address}")


if __name__ == "__main__":
    from tools.coordnode import standalone

    sys.exit(standalone(sys.argv[1:], "ddfs coord run mutex", add_arguments, run, node_main))
