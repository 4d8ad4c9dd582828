"""Per-transaction state holders that move only along a transition table.

Invariants:
* A `Tracked` object's state changes only through `move`, and only along an
  edge of its table; any other move raises `TransitionError`, which carries
  the transaction's recent history (what happened, in order, with times), so
  the first impossible event is reported where it happens, with context.
* History is bounded (the last `HISTORY` entries): memory stays flat however
  long a transaction lives.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from typing import Generic, TypeVar

from coord.twopc.types import TxId

S = TypeVar("S", bound=enum.Enum)
HISTORY = 16


class TransitionError(RuntimeError):
    """A state change the protocol forbids; names the transaction and its history."""

    def __init__(self, role: str, txid: TxId, old: object, new: object,
                 why: str, history: list[str]) -> None:
        self.role = role
        self.txid = txid
        self.history = history
        super().__init__(
            f"{role}: illegal transition {old} -> {new} for {txid} ({why}); "
            f"recent history: {history}"
        )


class Tracked(Generic[S]):
    """The state of one transaction at one node."""

    __slots__ = ("_history", "_moves", "_state", "role", "txid")

    def __init__(self, role: str, txid: TxId, moves: Mapping[S | None, frozenset[S]]) -> None:
        self.role = role  # e.g. "coordinator c" (for error messages)
        self.txid = txid
        self._moves = moves
        self._state: S | None = None  # None until the first move
        self._history: deque[str] = deque(maxlen=HISTORY)

    @property
    def state(self) -> S:
        if self._state is None:
            raise RuntimeError(f"{self.role}: {self.txid} has no state yet")
        return self._state

    @property
    def history(self) -> list[str]:
        return list(self._history)

    def move(self, new: S, why: str, now: float) -> None:
        old = self._state
        if new not in self._moves[old]:
            raise TransitionError(self.role, self.txid, _name(old), _name(new), why,
                                  [*self._history, f"t={now:g} refused {_name(new)}: {why}"])
        self._state = new
        self._history.append(f"t={now:g} {_name(old)}->{_name(new)}: {why}")

    def note(self, what: str, now: float) -> None:
        self._history.append(f"t={now:g} {what}")


def _name(state: enum.Enum | None) -> str:
    return "none" if state is None else state.name
