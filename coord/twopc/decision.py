"""The decision store: where a transaction's outcome is recorded once, for good.

Textbook 2PC blocks when every participant is prepared and the coordinator
is down: nobody alive knows the decision.  ddfs records each decision in the
replicated (Raft) KV store under `2pc/<txid>` with a compare-and-set on an
empty key, so the first recorded decision wins and anyone can read it:

* the coordinator records COMMIT (or ABORT) before sending it;
* an uncertain participant that cannot learn the outcome from its peers
  records ABORT; if that succeeds the coordinator's later COMMIT fails and it
  must abort too, otherwise the participant obeys the recorded decision.

Invariants: `decide(txid, proposal)` returns the one decision ever recorded
for `txid` (the proposal if the key was empty), so every caller, whenever it
asks, gets the same answer; `lookup` never records anything.
"""

from __future__ import annotations

from typing import Protocol

from coord.twopc.types import Decision, TxId

KEY_PREFIX = "2pc/"


def decision_key(txid: TxId) -> bytes:
    return (KEY_PREFIX + txid).encode()


def encode_decision(decision: Decision) -> bytes:
    return decision.name.encode()


def decode_decision(raw: bytes) -> Decision:
    try:
        return Decision[raw.decode()]
    except (KeyError, UnicodeDecodeError):
        raise DecisionStoreError(f"not a decision: {raw!r:.40}") from None


class DecisionStoreError(Exception):
    """The store could not answer (unreachable, timed out, or holds garbage)."""


class DecisionStore(Protocol):
    async def decide(self, txid: TxId, proposal: Decision) -> Decision:
        """Record `proposal` unless a decision is recorded; return the recorded one."""
        ...

    async def lookup(self, txid: TxId) -> Decision | None:
        """The recorded decision, or None if there is none yet."""
        ...


class MemoryDecisionStore:
    """In-memory twin.  The simulator calls the synchronous `decide_now`."""

    def __init__(self) -> None:
        self._decided: dict[TxId, Decision] = {}
        self.cas_calls = 0  # for tests: how many compare-and-sets were tried

    def decide_now(self, txid: TxId, proposal: Decision) -> Decision:
        self.cas_calls += 1
        return self._decided.setdefault(txid, proposal)

    def lookup_now(self, txid: TxId) -> Decision | None:
        return self._decided.get(txid)

    def recorded(self) -> dict[TxId, Decision]:
        return dict(self._decided)

    async def decide(self, txid: TxId, proposal: Decision) -> Decision:
        return self.decide_now(txid, proposal)

    async def lookup(self, txid: TxId) -> Decision | None:
        return self.lookup_now(txid)
