"""KvDecisionStore: the decision store on the replicated KV store (Raft).

Invariants: a decision is written only by `cas(2pc/<txid>, expected=None,
new=decision)`, a linearizable compare-and-set, so the first one wins and
is never overwritten; the answer is read from the cas result itself (the
current value on failure), so no second round trip can race with it.  The
KvClient's exactly-once session makes a retried cas harmless; if the
session expired (a long idle node), the command was not executed, so a new
session is opened and the cas sent again.
"""

from __future__ import annotations

from coord.kv.remote import KvClient, KvError, SessionExpired
from coord.twopc.decision import (
    DecisionStoreError,
    decision_key,
    decode_decision,
    encode_decision,
)
from coord.twopc.types import Decision, TxId


class KvDecisionStore:
    def __init__(self, kv: KvClient) -> None:
        self._kv = kv  # opened by the caller (`async with KvClient(...)`)

    async def decide(self, txid: TxId, proposal: Decision) -> Decision:
        key = decision_key(txid)
        try:
            try:
                result = await self._kv.cas(key, None, encode_decision(proposal))
            except SessionExpired:
                await self._kv.open()
                result = await self._kv.cas(key, None, encode_decision(proposal))
        except KvError as exc:
            raise DecisionStoreError(f"recording {proposal.name} for {txid}: {exc}") from exc
        if result.succeeded:
            return proposal
        if result.kv is None:  # cas failed but no value: cannot happen with expected=None
            raise DecisionStoreError(f"cas on {key!r} failed without a current value")
        return decode_decision(result.kv.value)

    async def lookup(self, txid: TxId) -> Decision | None:
        try:
            kv = await self._kv.get(decision_key(txid))
        except KvError as exc:
            raise DecisionStoreError(f"reading the decision of {txid}: {exc}") from exc
        return None if kv is None else decode_decision(kv.value)
