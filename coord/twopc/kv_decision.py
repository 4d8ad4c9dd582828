"""KvDecisionStore: the decision store on the replicated KV store (Raft).

Invariants: a decision is written only by `cas(2pc/<txid>, expected=None,
new=decision)`, a linearizable compare-and-set, so the first one wins and
is never overwritten; the answer is read from the cas result itself (the
current value on failure), so no second round trip can race with it.  The
KvClient's exactly-once session makes a retried cas harmless, and a cas
repeated under a new session only finds the decision already there.  The
session is opened lazily (the store may still be electing a leader when a
node starts) and reopened if it expired (the command was then not executed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from coord.kv.remote import KvClient, KvError, SessionExpired
from coord.twopc.decision import (
    DecisionStoreError,
    decision_key,
    decode_decision,
    encode_decision,
)
from coord.twopc.types import Decision, TxId

T = TypeVar("T")


class KvDecisionStore:
    def __init__(self, kv: KvClient) -> None:
        self._kv = kv  # not yet opened: see _call
        self._opened = False

    async def decide(self, txid: TxId, proposal: Decision) -> Decision:
        key = decision_key(txid)
        result = await self._call(lambda: self._kv.cas(key, None, encode_decision(proposal)),
                                  f"recording {proposal.name} for {txid}")
        if result.succeeded:
            return proposal
        if result.kv is None:  # cas failed, so the key exists: cannot happen
            raise DecisionStoreError(f"cas on {key!r} failed without a current value")
        return decode_decision(result.kv.value)

    async def lookup(self, txid: TxId) -> Decision | None:
        kv = await self._call(lambda: self._kv.get(decision_key(txid)),
                              f"reading the decision of {txid}")
        return None if kv is None else decode_decision(kv.value)

    async def _call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            if not self._opened:
                await self._kv.open()
                self._opened = True
            try:
                return await op()
            except SessionExpired:  # not executed: a new session may send it again
                await self._kv.open()
                return await op()
        except KvError as exc:
            raise DecisionStoreError(f"{what}: {exc}") from exc
