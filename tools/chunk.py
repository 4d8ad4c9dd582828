"""`ddfs chunk`: run one chunk server.

    ddfs chunk --id 1 --listen 127.0.0.1:7101 --data /var/lib/ddfs/chunk1 \
               --meta 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --secret-file /etc/ddfs/secret

Serves `chunk.*` on --listen, keeps replicas under --data (chunks/ and an
LMDB index/), and sends a heartbeat every second to the metadata leader
(found among --meta, following redirects).  Prints "ready on HOST:PORT"
once it serves; SIGTERM and SIGINT stop it gracefully (calls in progress
finish, the index is closed cleanly).  Also runnable as
`python -m tools.chunk ...`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger("ddfs.chunk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.common import add_secret_argument

    parser.add_argument("--config", type=Path, default=None,
                        help="cluster TOML (docs/operations.md): fills the options not given")
    parser.add_argument("--id", type=int, required=True, help="this chunk server's id (stable)")
    parser.add_argument("--listen", default="", help="HOST:PORT to serve chunk.* on")
    parser.add_argument("--data", type=Path, default=None, help="data folder")
    parser.add_argument("--meta", default="",
                        help="metadata members, HOST:PORT[,HOST:PORT...] (or ID=HOST:PORT)")
    parser.add_argument("--advertise", default="",
                        help="HOST:PORT clients should use (default: the bound address)")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--staging-mb", type=int, default=256,
                        help="memory for pushed data awaiting its write (MiB)")
    add_secret_argument(parser)


def run(args: argparse.Namespace) -> int:
    import trio

    from fs.chunk.metalink import MetaLink
    from fs.chunk.server import ChunkServerConfig, serve_chunk_server
    from fs.chunk.store import StoreError
    from fs.types import ServerId
    from tools.cli import UserError
    from tools.common import parse_endpoints, read_secret, rpc_client

    if args.config is not None:
        from tools.clusterconf import fill_chunk_args

        fill_chunk_args(args)
    for option in ("listen", "data", "meta"):
        if not getattr(args, option):
            raise UserError(f"missing --{option} (or --config with chunk {args.id} in it)")
    secret = read_secret(args)
    endpoints = parse_endpoints(args.meta)
    try:
        config = ChunkServerConfig(
            server_id=ServerId(args.id), listen=args.listen, data_dir=args.data,
            secret=secret, meta_endpoints=tuple(endpoints), advertise=args.advertise,
            heartbeat_interval=args.heartbeat_interval, staging_bytes=args.staging_mb << 20,
        ).validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None

    async def main() -> None:
        async with rpc_client(secret, role="chunk") as rpc, trio.open_nursery() as nursery:
            sink = MetaLink(rpc, endpoints)
            server = await nursery.start(serve_chunk_server, config, sink)
            print(f"ddfs chunk {config.server_id}: ready on {server.address}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.warning("chunk %d: %s, stopping", config.server_id,
                                signal.Signals(signum).name)
                    await server.stop()
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseException as exc:  # trio wraps task errors in ExceptionGroups
        cause = _leaf(exc, (OSError, StoreError))
        if cause is None:
            raise
        raise UserError(f"chunk {config.server_id}: {cause}") from None
    return 0


def _leaf(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in `exc` or, recursively, in its groups."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner, kinds)
            if found is not None:
                return found
    return None


if __name__ == "__main__":  # python -m tools.chunk, before the command is registered
    from tools.cli import UserError as _UserError

    _parser = argparse.ArgumentParser(prog="ddfs chunk")
    _parser.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(_parser)
    _args = _parser.parse_args()
    logging.basicConfig(level=logging.WARNING - 10 * min(_args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run(_args))
    except _UserError as _exc:
        print(f"ddfs: {_exc}", file=sys.stderr)
        sys.exit(2)
