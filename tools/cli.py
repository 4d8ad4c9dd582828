"""The `ddfs` command line.

Every sub-command lives in its own module that exposes
`add_arguments(parser)` and `run(args) -> int`; this file only maps names to
modules.  Only the module of the command being run is imported (so a short
command starts fast), and a module that fails to import only breaks its own
command, so one broken role cannot stop the others from starting.
Configuration (CLI, TOML, env) is read only under `tools/`; libraries receive
config objects.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# (command path) -> (module, one-line help).  Nested commands use a tuple path.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("bench", "native"): ("tools.bench_native", "checksum and page-diff throughput"),
    ("bench", "rpc"): ("tools.bench_rpc", "RPC round trips and bandwidth vs raw trio echo"),
    ("bench", "raft"): (
        "tools.bench_raft", "replicated KV writes and reads: ddfs vs etcd on this machine"
    ),
    ("bench", "fs"): (
        "tools.bench_fs", "sequential I/O and create/stat/unlink on a mount vs local disk"
    ),
    ("mount-helper",): (
        "tools.mount_helper",
        "install/remove /sbin/mount.fuse.ddfs (mount -t fuse.ddfs, /etc/fstab)",
    ),
    ("meta",): ("tools.meta", "run a metadata server (one Raft member)"),
    ("chunk",): ("tools.chunk", "run a chunk server"),
    ("mount",): ("tools.mount", "mount a ddfs file system with FUSE"),
    ("umount",): ("tools.umount", "unmount a ddfs mount"),
    ("coord", "run", "2pc"): (
        "tools.coordrun",
        "two-phase commit across real processes (kill at a named step, trace as Mermaid)",
    ),
    ("coord", "run", "mutex"): (
        "tools.coordrun_mutex",
        "mutual exclusion (centralized, Ricart-Agrawala, token ring) across real processes",
    ),
    ("coord", "run", "election"): (
        "tools.coordrun_election",
        "Bully or Ring election across real processes (kill a node, re-elect, trace)",
    ),
    ("trace",): ("tools.tracecli", "render recorded protocol traces (Mermaid or text timeline)"),
    ("kv",): ("tools.kvcli", "put/get/del/cas/range on the replicated KV store"),
    ("raft", "status"): ("tools.raftcli", "term, role, leader, indexes and lag of each member"),
    ("raft", "add"): ("tools.raftchange", "add a metadata member (learner, then voter)"),
    ("raft", "promote"): ("tools.raftchange", "make a caught-up learner a voter"),
    ("raft", "remove"): ("tools.raftchange", "remove a metadata member (the leader too)"),
    ("raft", "transfer"): ("tools.raftchange", "hand Raft leadership to another voter"),
    ("cluster",): ("tools.cluster", "start (up) or stop (down) a whole cluster on this machine"),
    ("append",): ("tools.appendcli", "record append of stdin to a ddfs file (GFS, many writers)"),
    ("fsck",): ("tools.fsck", "cross-check namespace, chunk maps and chunk servers"),
    ("status",): ("tools.status", "members, leader, chunk servers, under-replicated chunks"),
}


class UserError(Exception):
    """A fatal error caused by the user's input or environment: one line, no traceback."""


def _selected(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The command path named by argv (longest match), before argparse runs."""
    words = tuple(a for a in argv if not a.startswith("-"))
    for path in sorted(COMMANDS, key=len, reverse=True):
        if words[: len(path)] == path:
            return path
    return None


def _build_parser(selected: tuple[str, ...] | None) -> argparse.ArgumentParser:
    """All commands appear in --help; only the selected one's module is imported."""
    parser = argparse.ArgumentParser(prog="ddfs", description="ddfs distributed file system")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): top
    }
    for path, (module, help_text) in sorted(COMMANDS.items()):
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=f"{prefix[-1]} commands"
                )
                groups[prefix] = group_parser.add_subparsers(
                    dest="_".join(prefix) + "_command", required=True, metavar="COMMAND"
                )
        sub = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        if path == selected:
            _add_arguments(sub, module)
    return parser


def _add_arguments(sub: argparse.ArgumentParser, module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # Reported when (and only when) this command is run.
        sub.set_defaults(_import_error=f"{module}: {exc}")
        return
    mod.add_arguments(sub)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(_selected(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    broken = getattr(args, "_import_error", None)
    if broken is not None:
        print(f"ddfs: this command is unavailable ({broken})", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    try:
        rc: int = mod.run(args)
    except UserError as exc:
        print(f"ddfs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc
