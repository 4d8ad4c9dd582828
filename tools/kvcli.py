"""`ddfs kv`: talk to the replicated KV store like etcdctl.

    ddfs kv put KEY VALUE        prints OK (and the revision with -v)
    ddfs kv get KEY              prints KEY and VALUE on two lines; nothing if absent
    ddfs kv del KEY              prints 1 or 0 (keys deleted)
    ddfs kv cas KEY EXPECTED NEW prints OK or FAILED (exit 1); EXPECTED "" means absent
    ddfs kv range START [END]    prints KEY and VALUE lines for START <= key < END
    ddfs kv txn --if 'value(k1) = v1' --if 'version(k2) > 0' \
                --then 'put k1 v2' --then 'del k3' --else 'get k1'
                                 prints SUCCEEDED or FAILED (exit 1), then the ops' results
    ddfs kv watch PREFIX [--from INDEX] [--count N] [--json]
                                 prints one line per change of a key under PREFIX, in log
                                 order: "INDEX.SUB PUT KEY VALUE" or "INDEX.SUB DELETE KEY"
                                 (or a JSON object); from INDEX (default: from now), until
                                 N changes were printed (default: until interrupted).
                                 Events already compacted: "COMPACTED ..." and exit 2.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.common import add_endpoints_argument, add_secret_argument

    add_endpoints_argument(parser)
    add_secret_argument(parser)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per operation")
    sub = parser.add_subparsers(dest="op", required=True, metavar="OP")
    p = sub.add_parser("put", help="set KEY to VALUE")
    p.add_argument("key")
    p.add_argument("value")
    p = sub.add_parser("get", help="read KEY (linearizable)")
    p.add_argument("key")
    p = sub.add_parser("del", help="delete KEY")
    p.add_argument("key")
    p = sub.add_parser("cas", help="compare-and-set")
    p.add_argument("key")
    p.add_argument("expected")
    p.add_argument("new")
    p = sub.add_parser("range", help="list keys in [START, END)")
    p.add_argument("start")
    p.add_argument("end", nargs="?", default=None)
    p.add_argument("--limit", type=int, default=0)
    p = sub.add_parser("txn", help="if all compares hold run --then ops, else --else ops")
    p.add_argument("--if", dest="compares", action="append", default=[],
                   metavar="TARGET(KEY) OP OPERAND",
                   help="TARGET is value, version, create or mod; OP is =, !=, < or >")
    p.add_argument("--then", dest="then", action="append", default=[], metavar="OP",
                   help="'put KEY VALUE', 'del KEY', 'get KEY' or 'range START [END]'")
    p.add_argument("--else", dest="otherwise", action="append", default=[], metavar="OP")
    p = sub.add_parser("watch", help="print each change under PREFIX as it happens (docs/watch.md)")
    p.add_argument("prefix", help="key prefix ('' for every key)")
    p.add_argument("--from", dest="from_index", type=int, default=0, metavar="INDEX",
                   help="first log index to report (default 0: from now)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="stop after N changes (default 0: run until interrupted)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def run(args: argparse.Namespace) -> int:
    import trio

    from coord.kv.remote import KvClient, KvError
    from tools.cli import UserError
    from tools.common import parse_endpoints, read_secret, rpc_client

    secret = read_secret(args)
    endpoints = parse_endpoints(args.endpoints)

    async def main() -> int:
        async with rpc_client(secret) as rpc:
            kv = KvClient(rpc, endpoints, timeout=args.timeout)
            if args.op in ("get", "range"):
                return await _read(kv, args)
            if args.op == "watch":
                return await _watch(kv, args)
            await kv.open()
            return await _write(kv, args)

    try:
        return trio.run(main)
    except KvError as exc:
        raise UserError(str(exc)) from None


async def _read(kv: object, args: argparse.Namespace) -> int:
    from coord.kv.remote import KvClient

    assert isinstance(kv, KvClient)
    if args.op == "get":
        found = await kv.get(args.key.encode())
        if found is not None:
            sys.stdout.write(f"{args.key}\n{found.value.decode(errors='replace')}\n")
        return 0
    end = args.end.encode() if args.end is not None else None
    result = await kv.range(args.start.encode(), end, args.limit)
    for item in result.kvs:
        sys.stdout.write(f"{item.key.decode(errors='replace')}\n"
                         f"{item.value.decode(errors='replace')}\n")
    return 0


def _text(raw: bytes) -> str:
    return raw.decode(errors="backslashreplace")


async def _watch(kv: object, args: argparse.Namespace) -> int:
    import json

    from coord.kv.remote import KvClient
    from tools.cli import UserError

    assert isinstance(kv, KvClient)
    if args.from_index < 0 or args.count < 0:
        raise UserError("--from and --count must be >= 0")
    shown = 0
    async for ev in kv.watch(args.prefix.encode(), args.from_index):
        op = ev.kind.name
        if args.json:
            line = json.dumps({"index": ev.index, "sub": ev.sub, "op": op.lower(),
                               "key": _text(ev.key),
                               "value": None if ev.value is None else _text(ev.value)})
        else:
            value = "" if ev.value is None else f" {_text(ev.value)}"
            line = f"{ev.index}.{ev.sub} {op} {_text(ev.key)}{value}"
        print(line, flush=True)  # a line as soon as the change is known (pipes, tail)
        shown += 1
        if shown == args.count:
            return 0
    return 0  # not reached: the stream ends only by --count, an error or a signal


async def _write(kv: object, args: argparse.Namespace) -> int:
    from coord.kv.remote import KvClient

    assert isinstance(kv, KvClient)
    if args.op == "put":
        await kv.put(args.key.encode(), args.value.encode())
        print("OK")
        return 0
    if args.op == "del":
        print(1 if (await kv.delete(args.key.encode())).deleted else 0)
        return 0
    if args.op == "txn":
        from tools.kvtxn import parse_txn, show_txn_result

        result = await kv.txn(parse_txn(args.compares, args.then, args.otherwise))
        show_txn_result(result)
        return 0 if result.succeeded else 1
    expected = args.expected.encode() if args.expected != "" else None
    ok = (await kv.cas(args.key.encode(), expected, args.new.encode())).succeeded
    print("OK" if ok else "FAILED")
    return 0 if ok else 1
