"""`ddfs coord run 2pc`: one real two-phase commit across real processes on
127.0.0.1, optionally killing one of them at a named step.

    ddfs coord run 2pc --participants 3 [--kill coordinator|participant --at STEP]
                       [--victim p2] [--vote-abort p3] [--no-store] [--matrix] [--json]

It starts a 3-member `ddfs meta` Raft cluster (the decision store), a
coordinator and N participants (each its own OS process with its own LMDB log
and trace file under a temporary folder), runs one transaction, and — with
`--kill` — stops the chosen process exactly at STEP (the node SIGSTOPs itself
there), SIGKILLs it, restarts it from its log, and waits until recovery and
termination have finished.  It prints the outcome, every node's decision,
the message counts and the Lamport-ordered trace as a Mermaid sequence
diagram; `--json` prints one object instead (keys: outcome, participants,
participants_agree, left_prepared, messages, messages_total, coordinator,
store, kill, trace, mermaid).  `--matrix` runs every step of both roles in
one cluster and prints {"runs": [...], "all_agree": ..., "max_left_prepared": ...}.

Steps: coordinator  before-prepare, after-prepare-sent, before-decision-recorded,
                    before-decision-logged, after-decision-logged,
                    after-decision-sent, before-end
       participant  before-prepare-logged, after-prepare-logged, after-vote,
                    after-decision-logged, after-ack

Exit status: 0 when every participant decided the same as the coordinator
(and the store) and none is left prepared, 1 otherwise, 2 on usage errors.
Every process started is stopped at the end, on errors and Ctrl-C too (and
the children die with this process even if it is killed: see proclaunch).

The child processes run `python -m tools.coordrun node ...` (see node_main).
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coord.twopc.types import CoordStep, PartStep

if TYPE_CHECKING:
    from tools.proclaunch import ProcessGroup

COORD_STEPS = [s.value for s in CoordStep]
# UNCERTAIN is reached only when the decision is late; a single kill cannot force that.
PART_STEPS = [s.value for s in PartStep if s is not PartStep.UNCERTAIN]
SECRET = b"ddfs-coord-run-2pc"
COORDINATOR = "c"
log = logging.getLogger("ddfs.coordrun")


@dataclass(frozen=True, slots=True)
class Timing:
    """Protocol timing for the real processes (seconds)."""

    vote_timeout: float = 2.0
    decision_timeout: float = 2.0
    retry: float = 0.25  # PREPARE/decision resend, termination round, store retry


@dataclass(frozen=True, slots=True)
class Kill:
    role: str  # "coordinator" or "participant"
    node: str
    step: str
    restart: bool = True  # False: leave it down (coordinator only; shows blocking)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--participants", type=int, default=3, help="participants (1..9)")
    parser.add_argument("--kill", choices=["coordinator", "participant"],
                        help="kill this process at --at STEP, then restart it")
    parser.add_argument("--at", metavar="STEP",
                        help=f"coordinator: {', '.join(COORD_STEPS)}; "
                             f"participant: {', '.join(PART_STEPS)}")
    parser.add_argument("--victim", default="p1", help="which participant --kill kills (p1)")
    parser.add_argument("--no-restart", action="store_true",
                        help="leave the killed coordinator down: with --no-store the "
                             "participants block; with the Raft record they finish")
    parser.add_argument("--vote-abort", metavar="NAME",
                        help="make this participant vote ABORT (its check fails)")
    parser.add_argument("--no-store", action="store_true",
                        help="textbook 2PC: no decision record in Raft (may block)")
    parser.add_argument("--matrix", action="store_true",
                        help="kill each role at each step, one transaction each")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds a transaction may take to finish (default 30)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep logs, LMDB files and traces in DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _check_args(args: argparse.Namespace) -> Kill | None:
    from tools.cli import UserError

    if not 1 <= args.participants <= 9:
        raise UserError("--participants must be 1..9")
    names = [f"p{i}" for i in range(1, args.participants + 1)]
    if args.vote_abort is not None and args.vote_abort not in names:
        raise UserError(f"--vote-abort must name a participant ({', '.join(names)})")
    if args.matrix and (args.kill or args.at):
        raise UserError("--matrix runs every step itself: drop --kill/--at")
    if (args.kill is None) != (args.at is None):
        raise UserError("--kill and --at go together")
    if args.kill is None:
        if args.no_restart:
            raise UserError("--no-restart needs --kill coordinator")
        return None
    if args.no_restart and args.kill != "coordinator":
        raise UserError("--no-restart is for the coordinator (a participant that never "
                        "comes back cannot ACK, so nothing could ever end)")
    steps = COORD_STEPS if args.kill == "coordinator" else PART_STEPS
    if args.at not in steps:
        raise UserError(f"--at for a {args.kill}: one of {', '.join(steps)}")
    if args.kill == "participant" and args.victim not in names:
        raise UserError(f"--victim must name a participant ({', '.join(names)})")
    if args.no_store and args.at == "before-decision-recorded":
        raise UserError("before-decision-recorded exists only with the decision store")
    node = COORDINATOR if args.kill == "coordinator" else args.victim
    return Kill(args.kill, node, args.at, restart=not args.no_restart)


def run(args: argparse.Namespace) -> int:
    import trio

    from tools.proclaunch import ProcessGroup

    kill = _check_args(args)
    group = ProcessGroup()  # owned out here: stopped even if trio.run itself fails
    with ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="ddfs-2pc-")))
        base.mkdir(parents=True, exist_ok=True)
        stack.callback(group.close)  # before the temporary folder goes (LIFO)
        try:
            result = trio.run(_main, args, kill, base, group)
        except BaseExceptionGroup as exc:  # Ctrl-C outside the signal watcher's reach
            if exc.split(KeyboardInterrupt)[1] is None:
                raise KeyboardInterrupt from None
            raise
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0 if result["ok"] else 1


async def _main(args: argparse.Namespace, kill: Kill | None, base: Path,
                group: ProcessGroup) -> dict[str, Any]:
    """Run the transaction(s); SIGINT/SIGTERM cancel them (cleanup included)."""
    from tools.coordnode import interruptible

    async def work() -> dict[str, Any]:
        async with open_cluster(base, args.participants, use_store=not args.no_store,
                                group=group) as cluster:
            if args.matrix:
                return await run_matrix(cluster, timeout=args.timeout)
            return await cluster.transaction("tx1", kill, vote_abort=args.vote_abort,
                                             timeout=args.timeout)

    return await interruptible(work)  # KeyboardInterrupt after every process was stopped


@asynccontextmanager
async def open_cluster(base: Path, participants: int, *, use_store: bool = True,
                       timing: Timing = Timing(),
                       group: ProcessGroup | None = None) -> AsyncIterator[TwoPcCluster]:
    """Start the processes; stop every one of them on the way out, whatever happens."""
    from tools.common import rpc_client

    cluster = TwoPcCluster(base, participants, use_store=use_store, timing=timing,
                           group=group)
    try:
        await cluster.start()
        async with rpc_client(SECRET, role="coordrun") as rpc:
            cluster.rpc = rpc
            yield cluster
    finally:
        cluster.close()


async def run_matrix(cluster: TwoPcCluster, *, timeout: float = 30.0,
                     kills: Sequence[Kill] | None = None) -> dict[str, Any]:
    """Every kill in one cluster, one transaction each (default: every step of both roles)."""
    if kills is None:
        steps = [s for s in COORD_STEPS
                 if cluster.use_store or s != CoordStep.BEFORE_DECISION_RECORDED.value]
        kills = [Kill("coordinator", COORDINATOR, s) for s in steps]
        kills += [Kill("participant", "p1", s) for s in PART_STEPS]
    runs = []
    for i, kill in enumerate(kills, start=1):
        runs.append(await cluster.transaction(f"m{i}-{kill.node}-{kill.step}", kill,
                                              timeout=timeout))
    return {"runs": runs, "ok": all(r["ok"] for r in runs),
            "all_agree": all(r["participants_agree"] for r in runs),
            "max_left_prepared": max(r["left_prepared"] for r in runs)}


# ----------------------------------------------------------------------------- the cluster


class TwoPcCluster:
    """A decision store (3 `ddfs meta`), a coordinator and participants, all local."""

    def __init__(self, base: Path, participants: int, *, use_store: bool = True,
                 timing: Timing = Timing(), group: ProcessGroup | None = None) -> None:
        from tools.proclaunch import LocalMetaCluster, ProcessGroup, free_ports

        self.base = base
        self.use_store = use_store
        self.timing = timing
        self.secret_file = base / "secret"
        self.secret_file.write_bytes(SECRET + b"\n")
        self.group = group if group is not None else ProcessGroup()
        self.meta = LocalMetaCluster(self.group, base, self.secret_file) if use_store else None
        self.names = [COORDINATOR, *(f"p{i}" for i in range(1, participants + 1))]
        ports = free_ports(len(self.names))
        self.addresses = {n: f"127.0.0.1:{p}" for n, p in zip(self.names, ports, strict=True)}
        self.nodes = {n: self.group.add(self._proc(i, n)) for i, n in enumerate(self.names)}
        self.rpc: Any = None  # an RpcClient while open (see open_cluster)

    @property
    def participants(self) -> list[str]:
        return self.names[1:]

    def _proc(self, index: int, name: str) -> Any:
        from tools.proclaunch import Proc

        t = self.timing
        argv = [sys.executable, "-m", "tools.coordrun", "node", "--name", name,
                "--role", "coordinator" if name == COORDINATOR else "participant",
                "--id", str(100 + index),
                "--nodes", ",".join(f"{n}={a}" for n, a in self.addresses.items()),
                "--data", str(self.base / "nodes" / name), "--secret-file",
                str(self.secret_file), "--vote-timeout", str(t.vote_timeout),
                "--decision-timeout", str(t.decision_timeout), "--retry", str(t.retry)]
        if self.meta is not None:
            argv += ["--kv-endpoints", ",".join(self.meta.endpoints)]
        else:
            argv.append("--no-store")
        return Proc(name, argv, self.base / "nodes" / f"{name}.out")

    async def start(self) -> None:
        if self.meta is not None:
            await self.meta.start()
        for proc in self.nodes.values():
            proc.spawn()
        for proc in self.nodes.values():
            if not await proc.wait_for("ready on", 30.0):
                raise RuntimeError(f"{proc.name} did not start:\n{proc.output()}")

    def close(self) -> None:
        """Kill and reap every process."""
        self.group.close()

    # ------------------------------------------------------------------ one transaction

    async def transaction(self, txid: str, kill: Kill | None, *, vote_abort: str | None = None,
                          timeout: float = 30.0) -> dict[str, Any]:
        import trio

        from coord.twopc.node import ArmStep, BeginTxn
        from coord.twopc.types import Write

        started = time.monotonic()
        work = {p: [Write(f"acct/{txid}", f"{txid}@{p}".encode(),
                          expect=b"never" if p == vote_abort else None,
                          check=p == vote_abort)]
                for p in self.participants}
        reached = False
        if kill is not None:
            await self.rpc.call(self.addresses[kill.node], ArmStep(txid, kill.step), timeout=5)
        async with trio.open_nursery() as nursery:
            # The coordinator may stop inside this very call (a step of begin).
            nursery.start_soon(self._begin, BeginTxn(txid, work))
            if kill is not None:
                reached = await self._kill_and_restart(txid, kill)
        return await self.settle(txid, kill, reached, timeout=timeout, started=started)

    async def settle(self, txid: str, kill: Kill | None = None, reached: bool = False, *,
                     timeout: float = 30.0, started: float | None = None) -> dict[str, Any]:
        """Wait until `txid` is finished everywhere (or `timeout`); report what happened."""
        started = time.monotonic() if started is None else started
        final = await self._wait_settled(txid, timeout)
        return self._result(txid, kill, reached, final, await self._stored(txid),
                            time.monotonic() - started)

    async def restart(self, name: str) -> None:
        """Start a node that was killed (and left down) again."""
        proc = self.nodes[name]
        if not proc.running:
            await proc.start("ready on", 30.0)

    async def _begin(self, req: Any) -> None:
        from coord.rpc import RpcError

        try:
            await self.rpc.call(self.addresses[COORDINATOR], req, timeout=5)
        except RpcError as exc:  # the coordinator was stopped/killed meanwhile
            log.info("begin %s: %s", req.txid, exc)

    async def _kill_and_restart(self, txid: str, kill: Kill) -> bool:
        from coord.twopc.node import PAUSED

        proc = self.nodes[kill.node]
        reached = await proc.wait_for(f"{PAUSED} {kill.step} {txid}", 15.0)
        if not reached:
            return False
        proc.kill()
        if kill.restart:
            await proc.start("ready on", 30.0)
        return True

    async def _statuses(self, txid: str) -> dict[str, Any]:
        from coord.rpc import RpcError
        from coord.twopc.node import TxnStatus

        out: dict[str, Any] = {}
        for name, address in self.addresses.items():
            try:
                out[name] = await self.rpc.call(address, TxnStatus(txid), timeout=1.0)
            except RpcError:
                out[name] = None
        return out

    async def _wait_settled(self, txid: str, timeout: float) -> dict[str, Any]:
        import trio

        statuses: dict[str, Any] = {}
        with trio.move_on_after(timeout):
            while True:
                statuses = await self._statuses(txid)
                down = not self.nodes[COORDINATOR].running
                if _settled(statuses, self.participants, coordinator_down=down):
                    break
                await trio.sleep(0.1)
        return statuses

    async def _stored(self, txid: str) -> str | None:
        if self.meta is None:
            return None
        from coord.kv.remote import KvClient, KvError
        from coord.twopc.decision import decision_key
        from coord.twopc.types import TxId

        try:
            async with KvClient(self.rpc, self.meta.endpoints, timeout=5.0) as kv:
                found = await kv.get(decision_key(TxId(txid)))
        except KvError:
            return "unreachable"
        return None if found is None else found.value.decode().lower()

    def _result(self, txid: str, kill: Kill | None, reached: bool, statuses: dict[str, Any],
                stored: str | None, seconds: float) -> dict[str, Any]:
        from coord.trace import message_counts, to_mermaid

        coord = statuses.get(COORDINATOR)
        outcome = coord.decision if coord is not None and coord.decision else None
        if coord is None and stored in ("commit", "abort"):
            outcome = stored  # the coordinator is down: the Raft record is the outcome
        decisions = {p: (s.decision or None) if s is not None else None
                     for p, s in statuses.items() if p != COORDINATOR}
        left = sum(1 for p, s in statuses.items()
                   if p != COORDINATOR and (s is None or txid in s.undecided))
        agree = len(set(decisions.values())) == 1 and None not in decisions.values()
        consistent = agree and outcome in decisions.values() and (
            stored is None or stored == outcome)
        events = self.trace(txid)
        counts = message_counts(events)
        return {
            "txid": txid, "outcome": outcome, "ok": bool(consistent) and left == 0,
            "participants": decisions, "participants_agree": agree,
            "left_prepared": left, "store": stored if self.use_store else "not used",
            "coordinator": {"state": coord.state if coord else "down",
                            "decision": coord.decision or None if coord else None},
            "kill": None if kill is None else {**kill_dict(kill), "reached": reached},
            "messages": counts, "messages_total": sum(counts.values()),
            "seconds": round(seconds, 2), "trace": [e.to_json() for e in events],
            "mermaid": to_mermaid(events, actors=self.names, aliases=_aliases(self.names)),
        }

    def trace(self, txid: str) -> list[Any]:
        """Every node's trace events about `txid` (and the restarts in between)."""
        from coord.trace import read_jsonl

        out = []
        for name in self.names:
            events = read_jsonl(self.base / "nodes" / name / "trace.jsonl")
            mine = [e for e in events if _mentions(e.label, txid)]
            if not mine:
                continue
            lo, hi = min(e.lamport for e in mine), max(e.lamport for e in mine)
            out += [e for e in events if _mentions(e.label, txid)
                    or (e.label.startswith("RECOVER from") and lo <= e.lamport <= hi)]
        return out


def _settled(statuses: dict[str, Any], participants: list[str], *,
             coordinator_down: bool) -> bool:
    coord = statuses.get(COORDINATOR)
    if not coordinator_down and (coord is None or coord.state != "ended"):
        return False
    return all(statuses.get(p) is not None and statuses[p].decision for p in participants)


def _mentions(label: str, txid: str) -> bool:
    return txid in label.replace(":", " ").split()


def _aliases(names: list[str]) -> dict[str, str]:
    return {n: "Coordinator" if n == COORDINATOR else f"Participant {n}" for n in names}


def kill_dict(kill: Kill) -> dict[str, str]:
    return {"role": kill.role, "node": kill.node, "step": kill.step}


# ----------------------------------------------------------------------------- output


def format_text(result: dict[str, Any]) -> str:
    if "runs" in result:
        lines = [_summary_line(r) for r in result["runs"]]
        lines.append(f"all agree: {'yes' if result['all_agree'] else 'NO'}; "
                     f"max left prepared: {result['max_left_prepared']}")
        return "\n".join(lines) + "\n"
    counts = ", ".join(f"{k}={v}" for k, v in result["messages"].items())
    decisions = " ".join(f"{p}={d}" for p, d in result["participants"].items())
    lines = [_summary_line(result),
             f"decisions: coordinator={_coord_text(result['coordinator'])} "
             f"{decisions} store={result['store']}",
             f"messages: {counts} (total {result['messages_total']})",
             "", "```mermaid", result["mermaid"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _coord_text(coord: dict[str, Any]) -> str:
    return str(coord["decision"] or coord["state"] or "unknown")


def _summary_line(r: dict[str, Any]) -> str:
    kill = r["kill"]
    what = "no kill" if kill is None else (
        f"{kill['node']} killed at {kill['step']}"
        + ("" if kill["reached"] else " (step not reached)"))
    return (f"{r['txid']}: {str(r['outcome']).upper()} ({what}); participants agree: "
            f"{'yes' if r['participants_agree'] else 'NO'}; left prepared: "
            f"{r['left_prepared']}; {r['messages_total']} messages; {r['seconds']} s")


# ----------------------------------------------------------------------------- node process


def node_main(argv: Sequence[str]) -> int:
    """`python -m tools.coordrun node ...`: one 2PC node (a child of `ddfs coord run 2pc`)."""

    from coord.twopc.node import NodeConfig, serve_node
    from coord.twopc.types import NodeName, TwoPcConfig
    from tools.common import parse_endpoints

    p = argparse.ArgumentParser(prog="ddfs-2pc-node")
    p.add_argument("--name", required=True)
    p.add_argument("--role", required=True, choices=["coordinator", "participant"])
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--nodes", required=True, help="NAME=HOST:PORT,...")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--secret-file", type=Path, required=True)
    p.add_argument("--kv-endpoints", default="")
    p.add_argument("--no-store", action="store_true")
    p.add_argument("--vote-timeout", type=float, default=2.0)
    p.add_argument("--decision-timeout", type=float, default=2.0)
    p.add_argument("--retry", type=float, default=0.25)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    r = a.retry
    config = NodeConfig(
        name=NodeName(a.name), role=a.role, node_id=a.id,
        peers={NodeName(k): v for k, v in (i.split("=", 1) for i in a.nodes.split(","))},
        data_dir=a.data, secret=a.secret_file.read_bytes().strip(),
        kv_endpoints=() if a.no_store else tuple(parse_endpoints(a.kv_endpoints)),
        twopc=TwoPcConfig(vote_timeout=a.vote_timeout, prepare_retry=r, ack_retry=r,
                          decision_timeout=a.decision_timeout, query_retry=r * 2,
                          store_retry=r * 2, use_store=not a.no_store),
    ).validate()

    from tools.coordnode import serve_until_signal

    return serve_until_signal(serve_node, config,
                              lambda address: f"ddfs 2pc {config.name}: ready on {address}")


if __name__ == "__main__":
    from tools.coordnode import standalone

    sys.exit(standalone(sys.argv[1:], "ddfs coord run 2pc", add_arguments, run, node_main))
