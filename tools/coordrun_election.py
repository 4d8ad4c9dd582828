"""`ddfs coord run election`: a Bully or Ring election across real processes on
127.0.0.1, optionally killing a node (the coordinator, say) and re-electing.

    ddfs coord run election --algo bully|ring [--nodes 5] [--kill NODE|leader]
                            [--restart] [--json] [--keep DIR] [--timeout S]

It starts N election nodes (each its own OS process, ids 1..N, ring order
1..N; every node heartbeats every other), asks node 1 to hold an election
(the chapter's example: the lowest id notices first) and waits until every
node names N.  With `--kill`, it SIGKILLs that node (`leader`: the elected
one) and waits until the survivors, whose failure detectors notice the
silence, agree on the highest live id; with `--restart` it then starts the
killed node again (a recovered node holds an election: a higher id takes
over) and waits for agreement once more.

It prints the protocol message counts per election and in total and the
Lamport-ordered trace as a Mermaid sequence diagram; `--json` prints one
object instead: algo, nodes, entries (elections held: the phases in which
protocol messages were sent; killing a node that is not the coordinator
needs none), messages,
messages_per_entry, safety_violations (live nodes not naming the highest
live id at the end), messages_by_kind, phases, leaders, kill, seconds,
trace, mermaid.

Exit status: 0 when every phase ended with all live nodes agreeing on the
highest live id, 1 otherwise, 2 on usage errors.  Every process started is
killed at the end (errors and Ctrl-C included; children die with this
process even if it is killed: see tools/proclaunch).

The child processes run `python -m tools.coordrun_election node ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.proclaunch import Proc, ProcessGroup

SECRET = b"ddfs-coord-run-election"
READY = "ready on"
log = logging.getLogger("ddfs.coordrun.election")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", choices=["bully", "ring"], required=True)
    parser.add_argument("--nodes", type=int, default=5, help="election nodes (2..16)")
    parser.add_argument("--kill", metavar="NODE",
                        help="after the first election, SIGKILL this node id ('leader': "
                             "the elected coordinator) and wait for the re-election")
    parser.add_argument("--restart", action="store_true",
                        help="then start the killed node again (a higher id takes over)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds each election may take to settle (default 30)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep every node's output and trace file in DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _check_args(args: argparse.Namespace) -> None:
    from tools.cli import UserError

    if not 2 <= args.nodes <= 16:
        raise UserError("--nodes must be 2..16")
    if args.kill is not None and args.kill != "leader" and not (
            args.kill.isdigit() and 1 <= int(args.kill) <= args.nodes):
        raise UserError(f"--kill must be 'leader' or a node id 1..{args.nodes}")
    if args.restart and args.kill is None:
        raise UserError("--restart needs --kill")


def run(args: argparse.Namespace) -> int:
    import trio

    from tools.proclaunch import ProcessGroup

    _check_args(args)
    group = ProcessGroup()  # owned out here: stopped even if trio.run itself fails
    with ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="ddfs-election-")))
        base.mkdir(parents=True, exist_ok=True)
        stack.callback(group.close)  # before the temporary folder goes (LIFO)
        try:
            result = trio.run(_main, args, base, group)
        except BaseExceptionGroup as exc:  # Ctrl-C outside the signal watcher's reach
            if exc.split(KeyboardInterrupt)[1] is None:
                raise KeyboardInterrupt from None
            raise
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0 if result["ok"] else 1


async def _main(args: argparse.Namespace, base: Path, group: ProcessGroup) -> dict[str, Any]:
    from tools.coordnode import interruptible

    async def work() -> dict[str, Any]:
        async with open_cluster(base, args.algo, args.nodes, group=group) as cluster:
            return await cluster.scenario(args.kill, restart=args.restart,
                                          timeout=args.timeout)

    return await interruptible(work)  # KeyboardInterrupt after every process was stopped


@asynccontextmanager
async def open_cluster(base: Path, algo: str, nodes: int, *,
                       group: ProcessGroup | None = None) -> AsyncIterator[ElectionCluster]:
    """Start the nodes; kill every one of them on the way out, whatever happens."""
    from tools.common import rpc_client

    cluster = ElectionCluster(base, algo, nodes, group=group)
    try:
        await cluster.start()
        async with rpc_client(SECRET, role="coordrun") as rpc:
            cluster.rpc = rpc
            yield cluster
    finally:
        cluster.close()


class ElectionCluster:
    """N election processes on 127.0.0.1, ids 1..N."""

    def __init__(self, base: Path, algo: str, nodes: int, *,
                 group: ProcessGroup | None = None) -> None:
        from tools.proclaunch import ProcessGroup, free_ports

        self.base = base
        self.algo = algo
        self.ids = list(range(1, nodes + 1))
        self.secret_file = base / "secret"
        self.secret_file.write_bytes(SECRET + b"\n")
        self.group = group if group is not None else ProcessGroup()
        ports = free_ports(nodes)
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=True)}
        self.procs = {i: self.group.add(self._proc(i, passive=True)) for i in self.ids}
        self.rpc: Any = None  # an RpcClient while open (see open_cluster)

    def _proc(self, node: int, *, passive: bool, clock_floor: int = 0) -> Proc:
        from tools.proclaunch import Proc

        argv = [sys.executable, "-m", "tools.coordrun_election", "node", "--id", str(node),
                "--algo", self.algo,
                "--nodes", ",".join(f"{i}={a}" for i, a in self.addresses.items()),
                "--data", str(self.data(node)), "--secret-file", str(self.secret_file)]
        if passive:
            argv.append("--passive")
        if clock_floor:
            argv += ["--clock-floor", str(clock_floor)]
        return Proc(f"node{node}", argv, self.base / f"node{node}.out")

    def data(self, node: int) -> Path:
        return self.base / f"node{node}"

    async def start(self) -> None:
        for proc in self.procs.values():
            proc.spawn()
        for proc in self.procs.values():
            if not await proc.wait_for(READY, 30.0):
                raise RuntimeError(f"{proc.name} did not start:\n{proc.output()}")

    def close(self) -> None:
        self.group.close()

    def live(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.running]

    # ------------------------------------------------------------------ the scenario

    async def scenario(self, kill: str | None, *, restart: bool = False,
                       timeout: float = 30.0) -> dict[str, Any]:
        """Elect, optionally kill and re-elect, optionally restart; report."""
        from coord.election.node import StartElection

        started = time.monotonic()
        await self._settle_heartbeats()
        before = self.sent_total()
        await self.rpc.call(self.addresses[1], StartElection(), timeout=5)
        phases = [await self._phase("election started by node 1", timeout, before)]
        victim: int | None = None
        if kill is not None:
            victim = phases[0]["leader"] if kill == "leader" else int(kill)
            if victim is None:  # nobody was elected: kill the highest id
                victim = self.ids[-1]
            before = self.sent_total()
            self._kill(victim)
            phases.append(await self._phase(f"node {victim} killed", timeout, before))
            if restart:
                # Its clock starts above everything seen so far, so the trace
                # shows the restart after the re-election it follows.
                floor = max((e.lamport for e in self.events()), default=0)
                proc = self.group.add(self._proc(victim, passive=False, clock_floor=floor))
                self.procs[victim] = proc
                before = self.sent_total()
                await proc.start(READY, 30.0)
                phases.append(await self._phase(f"node {victim} restarted", timeout, before))
        return await self._report(phases, victim, restart, time.monotonic() - started)

    async def _settle_heartbeats(self) -> None:
        """Let every node hear every other once, so nobody starts out suspicious."""
        import trio

        await trio.sleep(0.5)

    def _kill(self, node: int) -> None:
        from coord.trace import EventKind, TraceEvent, append_jsonl, max_lamport, read_jsonl

        self.procs[node].kill()
        # The victim cannot trace its own death; note it on its lifeline.
        path = self.data(node) / "trace.jsonl"
        stamp = max_lamport(read_jsonl(path), str(node)) + 1
        append_jsonl(path, TraceEvent(EventKind.NOTE, str(node), stamp, "KILLED"))

    async def _phase(self, what: str, timeout: float, before: int) -> dict[str, Any]:
        """Wait until every live node names the highest live id (or `timeout`).

        `before`: the messages sent before the action that began this phase.
        """
        import trio

        began = time.monotonic()
        views: dict[int, int | None] = {}
        # Wait for agreement, then a little more so late messages are counted.
        with trio.move_on_after(timeout):
            while True:
                views = await self.leaders()
                if self._agreed(views):
                    break
                await trio.sleep(0.1)
        settled = time.monotonic() - began
        await trio.sleep(1.0)
        views = await self.leaders()
        return {"what": what, "leader": max(self.live()) if self._agreed(views) else None,
                "leaders": {str(k): v for k, v in views.items()},
                "agreed": self._agreed(views), "seconds": round(settled, 2),
                "messages": self.sent_total() - before}

    def _agreed(self, views: dict[int, int | None]) -> bool:
        live = self.live()
        return bool(live) and all(views.get(i) == max(live) for i in live)

    async def leaders(self) -> dict[int, int | None]:
        from coord.election.node import ElectionStatus
        from coord.rpc import RpcError

        out: dict[int, int | None] = {}
        for node in self.live():
            try:
                reply = await self.rpc.call(self.addresses[node], ElectionStatus(), timeout=1.0)
            except RpcError:
                out[node] = None
                continue
            out[node] = reply.leader or None
        return out

    def events(self) -> list[Any]:
        from coord.trace import read_jsonl

        return [e for i in self.ids for e in read_jsonl(self.data(i) / "trace.jsonl")]

    def sent_total(self) -> int:
        from coord.trace import message_counts

        return sum(message_counts(self.events()).values())

    async def _report(self, phases: list[dict[str, Any]], victim: int | None,
                      restart: bool, seconds: float) -> dict[str, Any]:
        from coord.trace import message_counts, to_mermaid

        events = self.events()
        counts = message_counts(events)
        total = sum(counts.values())
        final = await self.leaders()
        live = self.live()
        violations = sum(1 for i in live if final.get(i) != max(live))
        entries = max(1, sum(1 for p in phases if p["messages"] > 0))
        return {
            "algo": self.algo, "nodes": len(self.ids), "entries": entries,
            "messages": total, "messages_per_entry": round(total / entries, 2),
            "safety_violations": violations, "ok": violations == 0 and all(
                p["agreed"] for p in phases),
            "messages_by_kind": counts, "phases": phases,
            "leaders": {str(i): final.get(i) for i in live},
            "kill": None if victim is None else {"node": victim, "restarted": restart},
            "seconds": round(seconds, 2), "trace": [e.to_json() for e in events],
            "mermaid": to_mermaid(events, actors=[str(i) for i in self.ids],
                                  aliases={str(i): f"P{i}" for i in self.ids},
                                  title=f"{self.algo} election"),
        }


# ----------------------------------------------------------------------------- output


def format_text(result: dict[str, Any]) -> str:
    lines = [f"{result['algo']} election, {result['nodes']} nodes: "
             f"{result['entries']} elections, {result['messages']} messages "
             f"({result['messages_per_entry']} per election), safety violations: "
             f"{result['safety_violations']}"]
    for p in result["phases"]:
        outcome = f"all live nodes name {p['leader']}" if p["agreed"] else \
            f"NO agreement: {p['leaders']}"
        lines.append(f"  {p['what']}: {outcome} after {p['seconds']} s, "
                     f"{p['messages']} messages")
    counts = ", ".join(f"{k}={v}" for k, v in result["messages_by_kind"].items())
    lines += [f"messages: {counts}", "", "```mermaid", result["mermaid"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- node process


def node_main(argv: Sequence[str]) -> int:
    """`python -m tools.coordrun_election node ...`: one election node."""

    from coord.election.node import NodeConfig, serve_node
    from coord.election.types import NodeId

    p = argparse.ArgumentParser(prog="ddfs-election-node")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--algo", required=True, choices=["bully", "ring"])
    p.add_argument("--nodes", required=True, help="ID=HOST:PORT,... in ring order")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--secret-file", type=Path, required=True)
    p.add_argument("--passive", action="store_true",
                   help="do not hold an election at start-up (wait to be asked)")
    p.add_argument("--clock-floor", type=int, default=0,
                   help="start the Lamport clock at least at this value")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    peers = {NodeId(int(k)): v for k, v in (i.split("=", 1) for i in a.nodes.split(","))}
    config = NodeConfig(node=NodeId(a.id), algo=a.algo, peers=peers, data_dir=a.data,
                        secret=a.secret_file.read_bytes().strip(),
                        start_election=not a.passive, clock_floor=a.clock_floor).validate()

    from tools.coordnode import serve_until_signal

    banner = f"ddfs election node {config.node}: {READY}"
    return serve_until_signal(serve_node, config, lambda address: f"{banner} {address}")


if __name__ == "__main__":
    from tools.coordnode import standalone

    sys.exit(standalone(sys.argv[1:], "ddfs coord run election", add_arguments, run, node_main))
