"""Two-phase commit of chunk mutations across a replica set: the primary's
side (coordinator), as pure rules.  Sans-IO: no trio, no sockets, no disk.

The shape is coord/twopc's: the primary (lease holder) is the coordinator,
and every replica - the primary's own copy included - is a participant.
What differs from the generic cores is what makes it cheap enough for
every write: the participants are a chunk's replicas, the fencing token
of the lease does the work of a coordinator log, and a new primary plays
the recovering coordinator (`plan_resolution`).

`Round` - one mutation, `PREPARING -> COMMITTING | ABORTING -> DONE`:

* COMMIT iff every replica of the write voted READY (prepared durably).
  One missing vote - refused, unreachable, or a replica already known to
  have missed a serial under this token (`broken`) - aborts it everywhere.
  So a mutation is never committed on one replica and not on another
  replica of the set that is still listed: a replica that cannot take it
  is *reported* (`Finished.failed`, removed from the chunk map with a
  version bump by the client) and the client writes again without it.
* The reply: a refusal the client must act on (`Refuse`: STALE_TOKEN -
  a newer primary exists; STALE_VERSION - the lease is outdated; ENOSPC;
  IN_DOUBT; NO_DATA - push again; the primary's own refusal) or
  `Finished(serial, failed, committed)`.  Replicas that did not acknowledge a COMMIT are in
  `failed` too: they hold the prepared data but their state is unknown.
* A COMMIT or ABORT refused with STALE_TOKEN means a newer primary fenced
  the replica and settles the mutation itself: the answer is STALE_TOKEN.

`Book` - the primary's numbering of one chunk under one token: serials
are assigned once each, and the decision on serial n is sent only after
the one on n - 1 (`ready_to_decide`), so replicas never wait long.

`plan_resolution` - what a new primary (or a restarted one) does before
its first write: every replica was fenced with the new token and reported
its decisions and its undecided intents; each undecided mutation is
COMMITted everywhere if *some* replica committed it (then the old primary
decided COMMIT, which needed every replica's READY, so every replica holds
the data), else ABORTed everywhere.  Safe because no replica can take a
decision of an older token after the fence, and no client was told the
mutation succeeded unless every listed replica had applied it.  Every
listed replica must answer first: an unreachable one may be the only one
that committed, so it must be reported (dropped) before anything is
decided.  See docs/chunk-server.md for the whole argument.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coord.lease import FencingToken
from fs.chunk import protocol as p
from fs.chunk.intent import IntentKey, committed

UNREACHABLE = "UNREACHABLE"  # the outcome of a call that got no answer at all

# Refusals that say something about the whole write, not one replica: the
# client must act on them (new lease, ENOSPC to the writer, try later, push
# again - a replica whose pushed copy expired or was never stored for lack of
# staging memory is healthy, and is not dropped for it).
_GLOBAL = (p.STALE_TOKEN, p.STALE_VERSION, p.ENOSPC, p.IN_DOUBT, p.NO_DATA)
# A primary whose own copy fails like this is a bad replica: report it.
_REPLICA_FAULTS = frozenset({p.EIO, p.CHECKSUM, p.NO_CHUNK, p.OUT_OF_ORDER, UNREACHABLE})


class Decision(enum.Enum):
    COMMIT = "commit"
    ABORT = "abort"


class Phase(enum.Enum):
    PREPARING = "preparing"
    COMMITTING = "committing"
    ABORTING = "aborting"
    DONE = "done"


_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.PREPARING: frozenset({Phase.COMMITTING, Phase.ABORTING}),
    Phase.COMMITTING: frozenset({Phase.DONE}),
    Phase.ABORTING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class TransitionError(RuntimeError):
    """A round was driven out of order (a bug in the driver)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer of one replica to one call: `code` None means success."""

    address: str
    code: str | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class Refuse:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Finished:
    serial: int
    failed: tuple[str, ...]  # report these before the client counts the write as done
    committed: bool


Reply = Refuse | Finished


class Round:
    """One mutation coordinated by the primary.  Feed it the votes, then the
    acknowledgements of the decision; it says what to send and answer."""

    def __init__(self, key: IntentKey, primary: str, secondaries: Sequence[str],
                 broken: Iterable[str] = ()) -> None:
        self.key = key
        self.primary = primary
        self.replicas = tuple(dict.fromkeys([primary, *secondaries]))
        self.broken = frozenset(broken) & set(self.replicas)  # missed a serial: no vote
        self.phase = Phase.PREPARING
        self.decision: Decision | None = None
        self._votes: dict[str, Outcome] = {}
        self._history: list[str] = []

    def _move(self, to: Phase, why: str) -> None:
        if to not in _MOVES[self.phase]:
            raise TransitionError(f"round {self.key}: {self.phase.value} -> {to.value} "
                                  f"({why}); history: {self._history}")
        self._history.append(f"{self.phase.value} -> {to.value}: {why}")
        self.phase = to

    @property
    def voters(self) -> list[str]:
        """Who is asked to prepare (a broken replica is not: it cannot vote READY)."""
        return [a for a in self.replicas if a not in self.broken]

    def voted(self, outcomes: Iterable[Outcome]) -> Decision:
        """Every vote is in (a missing one counts as UNREACHABLE): decide."""
        got = {o.address: o for o in outcomes}
        for address in self.replicas:
            self._votes[address] = got.get(address) or Outcome(
                address, UNREACHABLE if address not in self.broken else p.OUT_OF_ORDER,
                "missed an earlier serial under this token" if address in self.broken else "")
        ok = all(v.code is None for v in self._votes.values())
        self.decision = Decision.COMMIT if ok else Decision.ABORT
        self._move(Phase.COMMITTING if ok else Phase.ABORTING,
                   "all prepared" if ok else "a vote is missing")
        return self.decision

    @property
    def deciders(self) -> list[str]:
        """Who is told the decision: every replica (an ABORT also unblocks the
        serial order at replicas that never prepared)."""
        return [a for a in self.replicas if a not in self.broken]

    def acknowledged(self, outcomes: Iterable[Outcome]) -> Reply:
        """The decision's acknowledgements are in: the answer for the client."""
        acks = {o.address: o for o in outcomes}
        self._move(Phase.DONE, "decision sent")
        missing = [a for a in self.deciders if a not in acks]
        nacks = [acks[a] for a in self.deciders if a in acks and acks[a].code is not None]
        if any(n.code == p.STALE_TOKEN for n in nacks):
            return Refuse(p.STALE_TOKEN, f"mutation {self.key}: a newer primary took over")
        if self.decision is Decision.COMMIT:
            failed = [*(n.address for n in nacks), *missing]
            return Finished(self.key[1], _ordered(self.replicas, failed), committed=True)
        return self._abort_reply()

    def _abort_reply(self) -> Reply:
        bad = [v for v in self._votes.values() if v.code is not None]
        for code in _GLOBAL:
            hit = next((v for v in bad if v.code == code), None)
            if hit is not None:
                return Refuse(code, hit.message or f"{code} from {hit.address}")
        own = self._votes[self.primary]
        if own.code is not None and own.code not in _REPLICA_FAULTS:
            return Refuse(own.code, own.message or own.code)
        return Finished(self.key[1], _ordered(self.replicas, [v.address for v in bad]),
                        committed=False)

    def failed_to_hear(self, outcomes: Iterable[Outcome]) -> set[str]:
        """Replicas that did not take the decision: they missed a serial."""
        got = {o.address for o in outcomes if o.code is None}
        return {a for a in self.deciders if a not in got}


def _ordered(replicas: Sequence[str], chosen: Iterable[str]) -> tuple[str, ...]:
    pick = set(chosen)
    return tuple(a for a in replicas if a in pick)


@dataclass(slots=True)
class Book:
    """The primary's numbering of one chunk under one token (in memory: a
    restarted primary resolves again, which re-derives `next_serial`)."""

    token: FencingToken
    next_serial: int = 1
    decided: int = 0  # every serial <= this one has had its decision sent
    broken: set[str] = field(default_factory=set)  # replicas that missed a serial
    stale: bool = False  # a round ended abnormally: settle again before the next one
    _done: set[int] = field(default_factory=set)  # decided serials above `decided`

    def assign(self) -> int:
        serial = self.next_serial
        self.next_serial += 1
        return serial

    def ready_to_decide(self, serial: int) -> bool:
        return serial <= self.decided + 1

    def finish(self, serial: int) -> None:
        """Serial `serial` had its decision sent (or gave up): later ones may go."""
        self._done.add(serial)
        while self.decided + 1 in self._done:
            self.decided += 1
            self._done.discard(self.decided)


# ---- settling what an earlier primary left undecided ------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One decision a replica must take, in this order."""

    token: FencingToken
    serial: int
    decision: Decision


@dataclass(frozen=True, slots=True)
class Resolution:
    steps: Mapping[str, tuple[Step, ...]]  # per replica, in (token, serial) order
    failed: tuple[str, ...]  # replicas that cannot be brought in line: report them
    next_serial: int  # where the resolver's own numbering starts
    settled: int  # undecided mutations decided by this resolution


def plan_resolution(token: FencingToken, reports: Mapping[str, p.IntentsReply | None],
                    replicas: Sequence[str]) -> Resolution | Refuse:
    """Settle every undecided mutation the replicas report, for the resolver
    holding `token`.  `reports[a]` None: replica `a` did not answer."""
    silent = [a for a in replicas if reports.get(a) is None]
    if silent:  # it may be the only one that committed something: report it first
        return Resolution({}, tuple(silent), 1, 0)
    got = {a: r for a in replicas if (r := reports[a]) is not None}
    newer = [(a, k) for a, r in got.items() for k in r.prepared if k[0] > token]
    if newer:
        a, k = newer[0]
        return Refuse(p.STALE_TOKEN, f"{a} holds mutation {k} of a newer token than {token}")
    keys = sorted({(FencingToken(t), s) for r in got.values() for t, s in r.prepared}
                  | _tails(got, token))
    outcome = {k: _settle(k, got) for k in keys}
    steps: dict[str, tuple[Step, ...]] = {}
    failed: list[str] = []
    for a, r in got.items():
        mine, ok = _steps_for(r, keys, outcome)
        steps[a] = mine
        if not ok:
            failed.append(a)
    own = [s for t, s in keys if t == token]
    decided = [r.serial for r in got.values() if r.token == token]
    next_serial = max([0, *own, *decided]) + 1
    return Resolution(steps, tuple(failed), next_serial, len(keys))


def _tails(got: Mapping[str, p.IntentsReply], token: FencingToken) -> set[IntentKey]:
    """Serials of a token that some replica decided and another has not heard
    of at all (it never prepared them): they need an explicit decision there,
    or that replica's serial order would wait for them forever."""
    out: set[IntentKey] = set()
    tokens: set[int] = {r.token for r in got.values() if 0 < r.token <= token}
    tokens |= {t for r in got.values() for t, _ in r.prepared}
    for t in tokens:
        hi = max([r.serial for r in got.values() if r.token == t]
                 + [s for r in got.values() for tt, s in r.prepared if tt == t] + [0])
        lo = min((r.serial if r.token == t else 0) for r in got.values()
                 if r.token <= t)
        out |= {(FencingToken(t), s) for s in range(lo + 1, hi + 1)}
    return out


def _settle(key: IntentKey, got: Mapping[str, p.IntentsReply]) -> Decision:
    for r in got.values():
        if committed(r.token, r.serial, frozenset(r.aborted), key):
            return Decision.COMMIT
    return Decision.ABORT


def _steps_for(r: p.IntentsReply, keys: Sequence[IntentKey],
               outcome: Mapping[IntentKey, Decision]) -> tuple[tuple[Step, ...], bool]:
    """The decisions replica `r` still needs, and whether it can take them all."""
    prepared = {(FencingToken(t), s) for t, s in r.prepared}
    aborted = frozenset(r.aborted)
    out: list[Step] = []
    for key in keys:
        token, serial = key
        if token < r.token:
            if key in prepared:  # an older token's leftover behind a newer decision
                return (), False
            continue
        if token == r.token and serial <= r.serial:
            mine = committed(r.token, r.serial, aborted, key)
            if (outcome[key] is Decision.COMMIT) != mine:
                return (), False  # it decided otherwise: it cannot stay
            continue
        if outcome[key] is Decision.COMMIT and key not in prepared:
            return (), False  # committed elsewhere, and it never got the data
        out.append(Step(token, serial, outcome[key]))
    return tuple(out), True
