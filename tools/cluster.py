"""`ddfs cluster up|down`: a whole cluster on this machine, as daemons, and its mount.

    ddfs cluster up   [--dir D | --config F] [--mount M] [--no-mount]
                      [--meta 3] [--chunks 3] [--replicas 3] [--timeout S]
    ddfs cluster down [--dir D | --config F] [--timeout S]

D defaults to $DDFS_HOME, else ./.ddfs.  The first `up` writes D/cluster.toml
(the one-file format of tools/clusterconf.py, docs/operations.md: ports
chosen free once, then kept) and a 0600 secret; data lives in D/meta<N>
and D/chunk<N>, pid files in D/run, logs in D/logs, the mount at D/mnt.

Invariants:

* `up` converges: every piece already running (verified pid file) is left
  alone, a dead one is started again (its stale pid file replaced), a dead
  FUSE mount is lazily unmounted before mounting again.  It returns only
  when a leader is agreed, every chunk server is registered alive with the
  leader, and (unless --no-mount) a file written to the mount reads back.
* `down` converges too: unmount first while the servers still run (so the
  mount can flush), cleanly when possible (a busy mount is reported, then
  detached lazily), then SIGTERM every daemon, SIGKILL those still alive
  after --timeout, and remove the pid files.  Data folders are kept, so the
  next `up` brings every file back.
* Only processes named by verified pid files are ever signalled.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tools import clusterconf, daemons
from tools.cli import UserError
from tools.clusterconf import ChunkMember, ClusterConfig, MetaMember, MountOptions

HOME_ENV = "DDFS_HOME"


# --- where a cluster lives ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    base: Path  # the cluster folder: run/, logs/, default data and mount
    config_path: Path

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    def spec(self, name: str, argv: list[str]) -> daemons.DaemonSpec:
        return daemons.DaemonSpec(name, tuple(argv), self.run_dir, self.log_dir, cwd=self.base)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """--dir / --config, shared by cluster, status and fsck."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--dir", type=Path, metavar="D",
                       help=f"cluster folder (default: ${HOME_ENV}, else ./.ddfs)")
    group.add_argument("--config", type=Path, metavar="F",
                       help="cluster configuration file (docs/operations.md)")


def layout_of(args: argparse.Namespace) -> Layout:
    if getattr(args, "config", None) is not None:
        path = Path(args.config).resolve()
        return Layout(path.parent, path)
    base = args.dir or Path(os.environ.get(HOME_ENV) or Path.cwd() / ".ddfs")
    base = Path(base).resolve()
    return Layout(base, base / clusterconf.CONFIG_NAME)


def load_target(args: argparse.Namespace) -> tuple[Layout, ClusterConfig]:
    """The cluster named by --dir/--config, which must exist."""
    layout = layout_of(args)
    if not layout.config_path.exists():
        raise UserError(f"no cluster configuration at {layout.config_path} "
                        "(start one with `ddfs cluster up`, or pass --config)")
    return layout, clusterconf.load(layout.config_path)


# --- the configuration of a new local cluster --------------------------------------------------


def new_config(layout: Layout, n_meta: int, n_chunks: int, replicas: int) -> ClusterConfig:
    from tools.proclaunch import free_ports

    ports = free_ports(n_meta + n_chunks)
    meta = tuple(MetaMember(i, f"127.0.0.1:{ports[i - 1]}", layout.base / f"meta{i}")
                 for i in range(1, n_meta + 1))
    chunks = tuple(ChunkMember(i, f"127.0.0.1:{ports[n_meta + i - 1]}", layout.base / f"chunk{i}")
                   for i in range(1, n_chunks + 1))
    try:
        return ClusterConfig(
            name=layout.base.name.lstrip(".") or "ddfs", secret_file=layout.base / "secret",
            meta=meta, chunks=chunks, replicas=replicas,
            mount=MountOptions(mountpoint=layout.base / "mnt"),
        ).validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def prepare(args: argparse.Namespace, say: Printer) -> tuple[Layout, ClusterConfig]:
    """Load the cluster's config or write a new one (and its secret)."""
    from tools.common import write_new_secret

    layout = layout_of(args)
    layout.base.mkdir(parents=True, exist_ok=True)
    if layout.config_path.exists():
        config = clusterconf.load(layout.config_path)
        if (args.meta, args.chunks) != (len(config.meta), len(config.chunks)):
            say(f"using {layout.config_path} as written: {len(config.meta)} metadata members, "
                f"{len(config.chunks)} chunk servers (--meta/--chunks apply to new clusters)")
    else:
        config = new_config(layout, args.meta, args.chunks, args.replicas)
        say(f"new cluster in {layout.base}")
    if args.mount is not None and Path(args.mount).resolve() != config.mount.mountpoint:
        config = replace(config, mount=replace(config.mount,
                                               mountpoint=Path(args.mount).resolve()))
    if config.mount.mountpoint is None:
        config = replace(config, mount=replace(config.mount, mountpoint=layout.base / "mnt"))
    write_new_secret(config.secret_file)
    os.chmod(config.secret_file, 0o600)
    return layout, clusterconf.save(config, layout.config_path)


# --- daemons of a config -----------------------------------------------------------------------


def meta_specs(layout: Layout, config: ClusterConfig) -> list[daemons.DaemonSpec]:
    return [layout.spec(f"meta{m.id}", clusterconf.meta_argv(config, m.id)) for m in config.meta]


def chunk_specs(layout: Layout, config: ClusterConfig) -> list[daemons.DaemonSpec]:
    return [layout.spec(f"chunk{c.id}", clusterconf.chunk_argv(config, c.id))
            for c in config.chunks]


def mount_spec(layout: Layout, config: ClusterConfig) -> daemons.DaemonSpec:
    assert config.mount.mountpoint is not None
    return layout.spec("mount", clusterconf.mount_argv(config, config.mount.mountpoint,
                                                       foreground=True))


def all_specs(layout: Layout, config: ClusterConfig) -> list[daemons.DaemonSpec]:
    return [*meta_specs(layout, config), *chunk_specs(layout, config),
            mount_spec(layout, config)]


class Printer:
    """Progress lines for the user (stdout), collected for the caller too."""

    def __init__(self, quiet: bool = False) -> None:
        self.lines: list[str] = []
        self.quiet = quiet

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if not self.quiet:
            print(line, flush=True)


def ensure_running(specs: list[daemons.DaemonSpec], say: Printer) -> dict[str, float]:
    """Start every spec not already running; name -> time.monotonic() of each start."""
    started: dict[str, float] = {}
    for spec in specs:
        pid = daemons.running_pid(spec.pid_file)
        if pid is not None:
            say(f"{spec.name:<8} running (pid {pid})")
            continue
        daemons.remove_pid_file(spec)  # stale, or none
        started[spec.name] = time.monotonic()
        pid = daemons.start(spec)
        say(f"{spec.name:<8} started (pid {pid}, log {spec.log_file})")
    return started


def _dead_starters(specs: list[daemons.DaemonSpec]) -> str:
    """What the daemons that already exited said in their last run."""
    out = []
    for s in specs:
        if daemons.running_pid(s.pid_file) is None:
            last = daemons.log_tail(s, 4000).rpartition("--- ")[2].partition("\n")[2]
            out.append(f"--- {s.name} exited ({s.log_file}):\n{last.strip()[-800:]}")
    running = len(specs) - len(out)
    if running:
        out.append(f"({running} other server(s) still running: `ddfs cluster down` stops them)")
    return "\n".join(out)


# --- up ------------------------------------------------------------------------------------------


def _wait_servers(config: ClusterConfig, layout: Layout, timeout: float, say: Printer,
                  spawned: dict[int, float]) -> None:
    """Wait for a leader, then for every chunk server (restarted ones: heard since).
    A daemon that exits meanwhile (a port taken, a bad data folder) ends the wait
    at once with its log, rather than after the whole timeout."""
    import trio

    from tools.clusterrpc import ClusterUnavailable, wait_chunk_servers, wait_leader
    from tools.common import rpc_client

    secret = clusterconf.read_secret(config)
    specs = meta_specs(layout, config) + chunk_specs(layout, config)

    async def watch() -> None:
        while True:  # until cancelled by the end of the wait
            await trio.sleep(0.25)
            if any(daemons.running_pid(s.pid_file) is None for s in specs):
                raise ClusterUnavailable("a server exited")

    async def main() -> None:
        async with rpc_client(secret) as rpc, trio.open_nursery() as nursery:
            nursery.start_soon(watch, name="cluster-up-watch")
            lead = await wait_leader(rpc, config.endpoints, timeout)
            say(f"leader: meta {lead['id']} (term {lead['term']})")
            reply = await wait_chunk_servers(rpc, config.endpoints,
                                             [c.id for c in config.chunks], timeout, spawned)
            alive = sum(1 for s in reply.servers if s.alive)
            say(f"chunk servers alive: {alive}/{len(config.chunks)}")
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* ClusterUnavailable as group:
        reason = "; ".join(str(e) for e in group.exceptions)
        raise UserError(f"the cluster did not come up: {reason}\n{_dead_starters(specs)}"
                        ) from None


def clear_mount_point(point: Path, spec: daemons.DaemonSpec, say: Printer) -> None:
    """Make `point` mountable: a dead mount is lazily detached; a live one not
    served by our daemon is an error."""
    state = daemons.mount_state(point)
    if state is daemons.MountState.DEAD:
        ok, message = daemons.unmount(point, lazy=True)
        say(f"mount    {point} was dead (crashed server): lazily unmounted"
            if ok else f"mount    {point} is dead and could not be unmounted: {message}")
        if not ok:
            raise UserError(f"cannot clear the dead mount at {point}: {message}")
    elif state is daemons.MountState.MOUNTED:
        raise UserError(f"{point} is already mounted, not by this cluster's mount daemon "
                        f"({spec.pid_file}); unmount it first")
    point.mkdir(parents=True, exist_ok=True)


def mount_up(layout: Layout, config: ClusterConfig, timeout: float, say: Printer) -> bool:
    """Mount unless mounted and usable; True once a file round trip works."""
    point = config.mount.mountpoint
    assert point is not None
    spec = mount_spec(layout, config)
    pid = daemons.running_pid(spec.pid_file)
    if pid is not None and daemons.mount_state(point) is daemons.MountState.MOUNTED:
        problem = daemons.round_trip(point, secrets.token_hex(4))
        if problem is None:
            say(f"mount    {point} mounted (pid {pid})")
            return True
        say(f"mount    {point} does not answer ({problem}): restarting it")
    if pid is not None:
        daemons.stop([spec], timeout=5.0)
    clear_mount_point(point, spec, say)
    daemons.remove_pid_file(spec)
    pid = daemons.start(spec)
    usable = daemons.wait_mounted(
        point, lambda: daemons.running_pid(spec.pid_file) is not None, timeout)
    problem = daemons.round_trip(point, secrets.token_hex(4)) if usable else "not mounted"
    if problem is None:
        say(f"mount    {point} mounted (pid {pid}, log {spec.log_file})")
        return True
    tail = daemons.log_tail(spec, 600).strip().splitlines()
    say(f"mount    FAILED at {point}: {problem}; "
        f"{tail[-1] if tail else 'no output'} (log {spec.log_file})")
    daemons.stop([spec], timeout=5.0)
    if daemons.mount_state(point) is not daemons.MountState.ABSENT:
        daemons.unmount(point, lazy=True)
    return False


def up(args: argparse.Namespace, say: Printer) -> int:
    layout, config = prepare(args, say)
    if config.replicas != 3:
        say(f"note: replicas = {config.replicas}, but `ddfs meta` places 3 replicas "
            "(its FsConfig default) until it reads the factor from the configuration")
    ensure_running(meta_specs(layout, config), say)
    started = ensure_running(chunk_specs(layout, config), say)
    spawned = {c.id: started[f"chunk{c.id}"] for c in config.chunks if f"chunk{c.id}" in started}
    _wait_servers(config, layout, args.timeout, say, spawned)
    if args.no_mount:
        say("mount    skipped (--no-mount)")
        return 0
    if not mount_up(layout, config, args.timeout, say):
        say("the servers are running; `ddfs cluster up --no-mount` skips the mount")
        return 1
    say(f"ready: {config.mount.mountpoint}")
    return 0


# --- down ----------------------------------------------------------------------------------------


def unmount_for_down(layout: Layout, config: ClusterConfig, timeout: float,
                     say: Printer) -> None:
    """Unmount cleanly (the mount flushes while the servers still run); a busy mount
    is reported and detached lazily; then the mount daemon gets `timeout` to exit."""
    point = config.mount.mountpoint or layout.base / "mnt"
    spec = mount_spec(layout, replace(config, mount=replace(config.mount, mountpoint=point)))
    state = daemons.mount_state(point)
    if state is daemons.MountState.MOUNTED:
        ok, message = daemons.unmount(point)
        if ok:
            say(f"mount    {point} unmounted")
        elif daemons.is_busy(message):
            users = daemons.holders(point)
            say(f"mount    {point} is busy (open by pids {users or '?'}): detaching lazily; "
                "their open files keep working until closed")
            ok, message = daemons.unmount(point, lazy=True)
        if not ok:
            say(f"mount    {point}: unmount failed: {message}")
    elif state is daemons.MountState.DEAD:
        ok, message = daemons.unmount(point, lazy=True)
        say(f"mount    {point} was dead: " + ("lazily unmounted" if ok else message))
    pid = daemons.running_pid(spec.pid_file)
    if pid is not None:  # a clean unmount ends it; give it the time to flush and exit
        record = daemons.read_record(spec.pid_file)
        if record is not None:
            _wait_exit(*record, timeout)
    result = daemons.stop([spec], timeout=timeout)[spec.name]
    if result is not daemons.Stopped.NOT_RUNNING:
        say(f"mount    daemon {result.value}")


def _wait_exit(pid: int, started: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while daemons.alive(pid, started) and time.monotonic() < deadline:
        time.sleep(daemons.POLL_SECONDS)


def down(args: argparse.Namespace, say: Printer) -> int:
    layout, config = load_target(args)
    unmount_for_down(layout, config, args.timeout, say)
    specs = chunk_specs(layout, config) + meta_specs(layout, config)
    results = daemons.stop(specs, timeout=args.timeout)
    for name, result in results.items():
        say(f"{name:<8} {result.value}")
    leftover = [s.name for s in specs if daemons.running_pid(s.pid_file) is not None]
    if leftover:
        say(f"still running: {leftover}")
        return 1
    say("down")
    return 0


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p_up = sub.add_parser("up", help="start (or complete) a local cluster and mount it")
    add_target_arguments(p_up)
    p_up.add_argument("--mount", type=Path, metavar="M", help="mount point (default: D/mnt)")
    p_up.add_argument("--no-mount", action="store_true", help="start the servers only")
    p_up.add_argument("--meta", type=int, default=3, help="metadata members (new cluster)")
    p_up.add_argument("--chunks", type=int, default=3, help="chunk servers (new cluster)")
    p_up.add_argument("--replicas", type=int, default=3, help="replication factor")
    p_up.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for each stage (default 60)")
    p_down = sub.add_parser("down", help="unmount and stop the local cluster (data kept)")
    add_target_arguments(p_down)
    p_down.add_argument("--timeout", type=float, default=10.0,
                        help="seconds a daemon gets to stop before SIGKILL (default 10)")


def run(args: argparse.Namespace) -> int:
    say = Printer()
    if args.cluster_command == "up":
        return up(args, say)
    if args.cluster_command == "down":
        return down(args, say)
    print(f"unknown cluster command {args.cluster_command}", file=sys.stderr)
    return 2
