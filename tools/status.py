"""`ddfs status`: the health of a cluster at a glance.

    ddfs status [--dir D | --config F] [--json]

* metadata members: id, address, role, term, leader, commit/applied index,
  follower lag (on the leader), clock offset from this host (`raft.status`
  and the clock probe, as `ddfs raft status`);
* chunk servers: the leader's view (`meta.servers`: placeable or not,
  seconds since the last heartbeat) and its failure detector's opinion
  (`meta.liveness`: alive / waiting / suspected / dead, phi, how long
  suspected, the detector's reason) merged with each server's own
  `chunk.stat` (capacity, used, free, replicas held);
* under-replicated chunks (fewer replicas than the replication factor on
  servers not declared dead, counted by the leader; "at risk" also leaves
  out the suspected ones), with the files they belong to when a
  member's data folder is on this host (only looked up when the count is
  not zero, at most `--files` of them);
* client sessions: the metadata service does not expose them yet (shown
  as unknown).

Exit status 0 when every member answers, a leader is agreed and every
configured chunk server is alive; 1 otherwise (the report says what is
wrong); 2 when the configuration cannot be read.
"""

from __future__ import annotations

import argparse
import json
import stat
from typing import TYPE_CHECKING, Any

from tools.clusterconf import ClusterConfig

if TYPE_CHECKING:
    from coord.rpc import RpcClient
    from fs.meta.liveness_protocol import LivenessReply


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.cluster import add_target_arguments

    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--files", type=int, default=20, metavar="N",
                        help="name at most N files of under-replicated chunks (default 20)")


async def detector_view(rpc: RpcClient, endpoints: list[str]) -> LivenessReply | str:
    """The leader's `meta.liveness` reply, or an error string (an older leader
    without the call, no leader)."""
    from coord.kv.remote import KvError, LeaderRouter
    from fs.meta.liveness_protocol import LivenessQuery
    from tools.clusterrpc import ATTEMPT_TIMEOUT

    router = LeaderRouter(endpoints, timeout=5.0)

    async def attempt(address: str) -> LivenessReply:
        return await rpc.call(address, LivenessQuery(), timeout=ATTEMPT_TIMEOUT)

    try:
        return await router.call(attempt)
    except KvError as exc:
        return str(exc)


def _detector_rows(
    reply: LivenessReply | str,
) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    """Per-server detector fields and the detector's settings, from `detector_view`."""
    if isinstance(reply, str):
        return {}, None
    rows: dict[int, dict[str, Any]] = {
        v.server: {"state": v.state, "phi": round(v.phi, 2),
                   "suspected_for": round(v.suspected_for, 1), "reason": v.reason,
                   "recorded_alive": v.recorded_alive}
        for v in reply.servers}
    settings: dict[str, Any] = {
        "name": reply.detector, "threshold": reply.threshold, "dead_after": reply.dead_after,
        "grace_left": round(reply.grace_left, 1), "at_risk": reply.at_risk}
    return rows, settings


async def gather(config: ClusterConfig, secret: bytes, max_files: int = 20) -> dict[str, Any]:
    """Everything `ddfs status` shows, as a JSON-ready dict."""
    from tools.clusterrpc import (
        ClusterUnavailable,
        agreed_leader,
        chunk_servers,
        chunk_stat,
        member_statuses,
    )
    from tools.common import rpc_client

    async with rpc_client(secret, role="status") as rpc:
        members = await member_statuses(rpc, config.endpoints, clock=True)
        lead = agreed_leader(members)
        view: dict[int, dict[str, Any]] = {}
        under: int | None = None
        error = ""
        try:
            reply = await chunk_servers(rpc, config.endpoints, timeout=5.0)
            under = reply.under_replicated
            view = {s.server: {"alive": s.alive, "silent_for": round(s.silent_for, 1),
                               "address": s.address} for s in reply.servers}
        except ClusterUnavailable as exc:
            error = str(exc)
        detected, detector = _detector_rows(await detector_view(rpc, config.endpoints))
        servers = []
        for c in config.chunks:
            row: dict[str, Any] = {"id": c.id, "address": c.address, **view.get(c.id, {}),
                                   **detected.get(c.id, {})}
            row.setdefault("alive", False)
            row.setdefault("state", "alive" if row["alive"] else "unknown")
            st = await chunk_stat(rpc, c.address)
            if isinstance(st, str):
                row["error"] = st
            else:
                row.update(capacity=st.capacity, used=st.used, free=st.free, chunks=st.chunks)
            servers.append(row)
    holders = {sid: row for sid, row in view.items()
               if row["alive"] or detected.get(sid, {}).get("state") in ("suspected", "waiting")}
    files = under_replicated_files(config, holders, max_files) if under else []
    return {"cluster": config.name, "config": str(config.path), "replicas": config.replicas,
            "leader": lead["id"] if lead else None, "members": members,
            "chunk_servers": servers, "under_replicated": under,
            "under_replicated_files": files, "leader_error": error, "sessions": None,
            "detector": detector}


def under_replicated_files(config: ClusterConfig, view: dict[int, dict[str, Any]],
                           limit: int) -> list[dict[str, Any]]:
    """Chunks with fewer replicas than the factor on the servers of `view` (those
    not declared dead), with their file's path, read from a local member's state
    (empty when none is local)."""
    from fs.types import ROOT_INODE, InodeId
    from tools.fsck import namespace_from_store

    local = [m.data for m in config.meta if (m.data / "kv" / "data.mdb").exists()]
    if not local:
        return []
    ns = namespace_from_store(local[0])
    live = set(view)
    parent = {e.child: (e.parent, e.name) for e in ns.entries}

    def path(ino: InodeId) -> str:
        parts: list[str] = []
        for _ in range(4096):  # bounded: a deeper or cyclic chain is cut off
            if ino == ROOT_INODE or ino not in parent:
                break
            ino, name = parent[ino]
            parts.append(name.decode(errors="replace"))
        return "/" + "/".join(reversed(parts))

    out = []
    for c in ns.chunks:
        alive = [s for s in c.replicas if s in live]
        inode = ns.inodes.get(c.inode)
        if len(alive) < config.replicas and inode is not None and stat.S_ISREG(inode.mode):
            out.append({"handle": c.handle, "inode": c.inode, "index": c.index,
                        "live_replicas": alive, "path": path(c.inode)})
            if len(out) >= limit:
                break
    return out


def healthy(status: dict[str, Any], config: ClusterConfig) -> bool:
    return (status["leader"] is not None
            and all("error" not in m for m in status["members"])
            and all(s["alive"] for s in status["chunk_servers"]))


def _size(n: int | None) -> str:
    """Bytes for people: 512B, 3.2M, 78.8G."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}P"


def render(status: dict[str, Any]) -> list[str]:
    lines = [f"cluster {status['cluster']} ({status['config']}), replicas {status['replicas']}, "
             f"leader: {status['leader'] if status['leader'] is not None else 'NONE'}", "",
             "metadata members:",
             f"  {'id':>3} {'address':<21} {'role':<10} {'term':>5} {'leader':>6} "
             f"{'commit':>8} {'applied':>8} {'skew ms':>14}  lag"]
    for m in status["members"]:
        if "error" in m:
            lines.append(f"  {'?':>3} {m['address']:<21} unreachable: {m['error']}")
            continue
        lag = ", ".join(f"{p}:{n}" for p, n in m.get("lag", {}).items()) or "-"
        skew = f"{m['clock_offset_ms']:+.3f}±{m['clock_error_ms']:.3f}"
        lines.append(f"  {m['id']:>3} {m['address']:<21} {m['role']:<10} {m['term']:>5} "
                     f"{m['leader']!s:>6} {m['commit_index']:>8} {m['applied_index']:>8} "
                     f"{skew:>14}  {lag}")
    lines += ["", *render_chunk_servers(status)]
    under = status["under_replicated"]
    detector = status.get("detector") or {}
    risk = f", at risk {detector['at_risk']}" if detector.get("at_risk") else ""
    lines += ["", f"under-replicated chunks: {'?' if under is None else under}{risk}"
              + (f" ({status['leader_error']})" if status["leader_error"] else "")]
    lines += [f"  chunk {f['handle']} of {f['path']} (index {f['index']}): live replicas "
              f"{f['live_replicas']}" for f in status["under_replicated_files"]]
    lines.append("client sessions: unknown (not exposed by the metadata service yet)")
    return lines


def _phi_text(row: dict[str, Any]) -> str:
    phi = row.get("phi", -1.0)
    return "-" if phi < 0 else f"{phi:.1f}"


def render_chunk_servers(status: dict[str, Any]) -> list[str]:
    """The chunk-server table: state as the leader's detector sees it, with the reason
    of every suspicion or death underneath."""
    detector = status.get("detector")
    head = "chunk servers:"
    if detector:
        limit = (f"phi > {detector['threshold']:g}" if detector["name"] == "phi"
                 else f"silent > {detector['threshold']:g} s")
        head += (f" (detector {detector['name']}: suspect when {limit}, dead after "
                 f"{detector['dead_after']:g} s of silence")
        head += f"; grace {detector['grace_left']:g} s left)" if detector["grace_left"] else ")"
    lines = [head, f"  {'id':>3} {'address':<21} {'state':<9} {'capacity':>9} {'used':>9} "
                   f"{'free':>9} {'chunks':>7} {'phi':>6}  last heartbeat"]
    for s in status["chunk_servers"]:
        beat = f"{s['silent_for']}s ago" if s.get("silent_for", -1) >= 0 else "never"
        tail = f"  unreachable: {s['error']}" if "error" in s else ""
        state = s["state"] if s["state"] in ("alive", "waiting") else s["state"].upper()
        lines.append(f"  {s['id']:>3} {s['address']:<21} {state:<9} "
                     f"{_size(s.get('capacity')):>9} {_size(s.get('used')):>9} "
                     f"{_size(s.get('free')):>9} {s.get('chunks', '?')!s:>7} "
                     f"{_phi_text(s):>6}  {beat}{tail}")
        if s["state"] in ("suspected", "dead") and s.get("reason"):
            since = (f" (suspected for {s['suspected_for']:g} s)"
                     if s.get("suspected_for", -1) >= 0 else "")
            lines.append(f"        {s['state']}: {s['reason']}{since}")
    return lines


def run(args: argparse.Namespace) -> int:
    import trio

    from tools.cluster import load_target
    from tools.clusterconf import read_secret

    _, config = load_target(args)
    status = trio.run(gather, config, read_secret(config), args.files)
    status["healthy"] = healthy(status, config)
    if args.json:
        print(json.dumps(status))
    else:
        print("\n".join(render(status)))
    return 0 if status["healthy"] else 1
