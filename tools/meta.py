"""`ddfs meta`: run one metadata server (a member of the Raft group).

    ddfs meta --id 1 --members 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
              --data /var/lib/ddfs/meta1 --secret-file /etc/ddfs/secret

or `ddfs meta --config meta.toml` with the same keys (id, members as a table
of id -> address, data, secret_file, and optional [raft] timings, [fs] settings
(replicas, lease_ms) and [liveness] (failure detector: docs/fs-meta.md)), or
`ddfs meta --config cluster.toml --id N` with the one-file cluster format
(tools/clusterconf.py, docs/operations.md).

A new member joins a running cluster with

    ddfs meta --id 4 --listen 127.0.0.1:7004 --join 127.0.0.1:7001,127.0.0.1:7002 \
              --data /var/lib/ddfs/meta4 --secret-file /etc/ddfs/secret

it starts empty, asks the cluster to add it as a learner and catches up;
`ddfs raft promote 4` then makes it a voter (docs/raft.md).  SIGTERM
and SIGINT stop it gracefully.
"""

from __future__ import annotations

import argparse
import logging
import signal
import tomllib
from pathlib import Path
from typing import Any

log = logging.getLogger("ddfs.meta")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.common import add_secret_argument

    parser.add_argument("--config", type=Path, help="TOML file with the options below")
    parser.add_argument("--id", type=int, help="this member's id")
    parser.add_argument("--members", "--peers", dest="members",
                        help="ID=HOST:PORT,... for every member, this one included")
    parser.add_argument("--data", type=Path, help="data folder (Raft log and state)")
    parser.add_argument("--join", metavar="ENDPOINTS",
                        help="join a running cluster through these members (host:port,...): "
                             "start empty and ask to be added as a learner")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="this member's address (with --join, instead of --members)")
    parser.add_argument("--session-ttl", type=float, default=None,
                        help="seconds of log time after which an idle client session "
                             "expires (default 60; every member must use the same value)")
    parser.add_argument("--event-retention", type=int, default=None,
                        help="watch events kept, the newest (default 100000; 0: all until "
                             "compacted; every member must use the same value)")
    parser.add_argument("--election-timeout", type=float, default=None,
                        help="minimum election timeout in seconds (default 1.0)")
    parser.add_argument("--lease-reads", action="store_true",
                        help="serve linearizable reads under the leader lease (no round trip); "
                             "safe only if clocks drift less than [raft] clock_drift_bound "
                             "per election timeout (docs/raft.md)")
    add_secret_argument(parser)


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from tools.cli import UserError

    conf: dict[str, Any] = {}
    if args.config is not None:
        try:
            conf = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read {args.config}: {exc}") from None
        from tools.clusterconf import is_cluster_file, meta_keys  # docs/operations.md
        if is_cluster_file(conf):  # the one-file cluster format: [meta.N] tables
            conf = meta_keys(conf, args.config, args.id)
        if "members" in conf and isinstance(conf["members"], dict):
            conf["members"] = ",".join(f"{k}={v}" for k, v in conf["members"].items())
        if "secret_file" in conf and args.secret_file is None:
            args.secret_file = Path(conf["secret_file"])
    if args.join is not None:
        if args.listen is None:
            raise UserError("--join needs --listen HOST:PORT (this member's address)")
        if args.id is None:
            raise UserError("--join needs --id")
        conf["members"] = f"{args.id}={args.listen}"
    for key in ("id", "members", "data"):
        value = getattr(args, key)
        if value is not None:
            conf[key] = value
        if key not in conf:
            raise UserError(f"missing --{key} (or `{key}` in the config file)")
    return conf


def run(args: argparse.Namespace) -> int:
    import trio

    from coord.kv.server import MemberConfig, serve_member
    from coord.kv.types import KVConfig
    from coord.raft.config import RaftConfig
    from coord.raft.types import NodeId
    from tools.cli import UserError
    from tools.common import parse_endpoints, parse_members, read_secret

    conf = _load(args)
    raft_conf = dict(conf.get("raft", {}))
    kv_conf = dict(conf.get("kv", {}))
    if args.session_ttl is not None:
        kv_conf["session_ttl_ms"] = int(args.session_ttl * 1000)
    if args.lease_reads:
        raft_conf["lease_reads"] = True
    if args.event_retention is not None:
        kv_conf["event_retention"] = args.event_retention
    if args.election_timeout is not None:
        raft_conf["election_timeout_min"] = args.election_timeout
        raft_conf["election_timeout_max"] = 2 * args.election_timeout
    try:
        config = MemberConfig(
            node_id=NodeId(int(conf["id"])), members=parse_members(str(conf["members"])),
            data_dir=Path(conf["data"]), secret=read_secret(args), raft=RaftConfig(**raft_conf),
            kv=KVConfig(**kv_conf),
            plugin_settings={k: dict(conf.get(k, {})) for k in ("fs", "liveness")},
            join=args.join is not None,
            join_endpoints=tuple(parse_endpoints(args.join)) if args.join is not None else (),
        ).validate()
        from fs.meta.server import fs_plugin

        fs_plugin(config.plugin_settings)  # refuse bad [fs]/[liveness] settings before serving
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_member, config)
            log.warning("meta %d serving on %s", config.node_id, address)
            print(f"ddfs meta {config.node_id}: ready on {address}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.warning("meta %d: %s, stopping", config.node_id,
                                signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except OSError as exc:
        raise UserError(f"meta {config.node_id}: {exc}") from None
    except Exception as exc:
        failed = _storage_failure(exc)
        if failed is None:
            raise
        # Fail-stop: a member that cannot make its state durable must not go on
        # answering (it would acknowledge what it cannot keep).  One clear line.
        raise UserError(f"meta {config.node_id}: stopped, its storage failed: {failed}") from None
    return 0


def _storage_failure(exc: BaseException) -> Exception | None:
    """The Raft-log or state-store error inside `exc` (trio wraps task errors in
    exception groups), if that is what ended the member."""
    from coord.kv.lmdb_state import KVStoreError
    from coord.raft.storage import StorageError

    if isinstance(exc, StorageError | KVStoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _storage_failure(inner)
            if found is not None:
                return found
    return None
