"""A concurrent KV workload that records a history for the linearizability checker.

Each client owns a session and runs get/put/cas on a few shared keys, plus
sequential puts to a private key whose version must equal the number of
puts applied — a command applied twice would show as a version too high.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio

from coord.kv.remote import KvClient, KvError, KvTimeout
from coord.lincheck import ClientId, History
from coord.rpc import RpcClient

SHARED_KEYS = [b"k0", b"k1", b"k2", b"k3"]


@dataclass
class ClientLog:
    cid: int
    private_puts: list[tuple[bytes, bool]] = field(default_factory=list)  # (value, acked)
    acked: int = 0
    failed: int = 0


async def run_client(
    rpc: RpcClient, endpoints: list[str], cid: int, history: History, stop: trio.Event,
    rng: random.Random, log: ClientLog, *, timeout: float = 8.0,
) -> None:
    kv = KvClient(rpc, endpoints, timeout=timeout, attempt_timeout=1.0, rng=rng)
    with trio.fail_after(30):
        await kv.open()
    n = 0
    while not stop.is_set():
        n += 1
        choice = rng.random()
        key = rng.choice(SHARED_KEYS)
        value = f"c{cid}-{n}".encode()
        if choice < 0.2:
            await _private_put(kv, cid, n, log)
            continue
        arg: object
        if choice < 0.55:
            kind, arg = "get", None
        elif choice < 0.85:
            kind, arg = "put", value
        else:
            prev = f"c{rng.randrange(1, 5)}-{rng.randrange(1, max(2, n))}".encode()
            kind, arg = "cas", (rng.choice([prev, None]), value)
        op = history.invoke(ClientId(cid), kind, key, arg, trio.current_time())
        try:
            out = await _do(kv, kind, key, arg)
        except KvTimeout:
            history.unknown(op)
            log.failed += 1
            continue
        history.complete(op, out, trio.current_time())
        log.acked += 1


async def _do(kv: KvClient, kind: str, key: bytes, arg: object) -> object:
    if kind == "get":
        found = await kv.get(key)
        return None if found is None else found.value
    if kind == "put":
        assert isinstance(arg, bytes)
        await kv.put(key, arg)
        return None
    assert isinstance(arg, tuple)
    return (await kv.cas(key, arg[0], arg[1])).succeeded


async def _private_put(kv: KvClient, cid: int, n: int, log: ClientLog) -> None:
    value = f"own{cid}-{n}".encode()
    try:
        await kv.put(b"own%d" % cid, value)
        log.private_puts.append((value, True))
    except KvError:
        log.private_puts.append((value, False))


def check_no_duplicates(log: ClientLog, final_value: bytes | None, version: int) -> None:
    """The private key's version counts applied puts: never more than issued up to
    the final value, and exactly that many when every put was acknowledged."""
    if not log.private_puts:
        return
    values = [v for v, _ in log.private_puts]
    assert final_value in values, f"client {log.cid}: final value {final_value!r} never written"
    upto = values.index(final_value) + 1
    unknown = sum(1 for _, acked in log.private_puts[:upto] if not acked)
    assert upto - unknown <= version <= upto, (
        f"client {log.cid}: version {version} after {upto} puts ({unknown} unacknowledged): "
        "a command was applied twice or an acknowledged put was lost"
    )
    # Every acknowledged put after the final value's would have replaced it.
    later_acked = [v for v, acked in log.private_puts[upto:] if acked]
    assert not later_acked, f"client {log.cid}: acknowledged puts {later_acked[:3]} lost"
