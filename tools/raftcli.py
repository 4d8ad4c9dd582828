"""`ddfs raft status`: voters and learners, then term, role, leader,
commit/applied index, the snapshot index and first log index (compaction),
lag per follower for each member."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.common import add_endpoints_argument, add_secret_argument

    add_endpoints_argument(parser)
    add_secret_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per member")


def _skew(row: dict[str, object]) -> str:
    return f"{row['clock_offset_ms']:+.3f}±{row['clock_error_ms']:.3f}"


def run(args: argparse.Namespace) -> int:
    import trio

    from coord.clock.rpc import measure_offset
    from coord.raft.rpc import RaftStatus
    from coord.rpc import RpcError
    from tools.common import parse_endpoints, read_secret, rpc_client

    secret = read_secret(args)
    endpoints = parse_endpoints(args.endpoints)

    async def main() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        async with rpc_client(secret) as rpc:
            for address in endpoints:
                try:
                    reply = await rpc.call(address, RaftStatus(), timeout=2.0)
                    row = json.loads(reply.json)
                    est = await measure_offset(rpc, address, samples=4)
                    row["clock_offset_ms"] = round(est.offset / 1e6, 3)
                    row["clock_error_ms"] = round(est.error_bound / 1e6, 3)
                    rows.append(row)
                except RpcError as exc:
                    rows.append({"address": address, "error": str(exc)})
        return rows

    rows = trio.run(main)
    if args.json:
        print(json.dumps(rows))
        return 0 if all("error" not in r for r in rows) else 1
    voting = next((r for r in rows if "voters" in r), None)
    if voting is not None:
        print(f"voters: {voting['voters']}  learners: {voting['learners']}")
    print(f"{'id':>3} {'address':<21} {'role':<13} {'term':>5} {'leader':>6} "
          f"{'commit':>8} {'applied':>8} {'snapshot':>8} {'first':>8} {'skew ms':>14}  lag")
    for r in rows:
        if "error" in r:
            print(f"{'?':>3} {r['address']!s:<21} unreachable: {r['error']}")
            continue
        lag = ", ".join(f"{p}:{n}" for p, n in dict(r["lag"]).items())  # type: ignore[call-overload]
        print(f"{r['id']!s:>3} {r['address']!s:<21} {r['role']!s:<13} {r['term']!s:>5} "
              f"{r['leader']!s:>6} {r['commit_index']!s:>8} {r['applied_index']!s:>8} "
              f"{r.get('snapshot_index', 0)!s:>8} {r.get('first_index', 1)!s:>8} "
              f"{_skew(r):>14}  {lag}")
    return 0 if all("error" not in r for r in rows) else 1
