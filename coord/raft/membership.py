"""Cluster membership: configurations, single-server changes and their rules.

A `Membership` is the whole configuration: the voters, the learners and
the address of every member.  A change is proposed as one log entry of kind
CONFIG whose data is the *resulting* `Membership` (not a delta), so any
member can read its configuration from the newest CONFIG entry in its log
without replaying history, and the address book travels with it: every
member can reach a newly added one.

Rules (Ongaro's dissertation §4.1, single-server changes):

* a configuration takes effect on a member as soon as its entry is in that
  member's log (appended, not committed); if the entry is removed again
  (log conflict), the previous configuration is back in force;
* a change adds or removes at most one voter (a learner may be added,
  promoted or removed), so any majority of the old voters intersects any
  majority of the new ones, which is what keeps two leaders out of one term;
* at most one change is uncommitted, and a new leader proposes none before
  it committed an entry of its own term (the fix in Ongaro's raft-dev post
  of 2015 for the single-server algorithm).

Invariants of `ConfigTracker`: `committed` is the configuration of the
newest CONFIG entry at or below the commit index (or the bootstrap one);
`pending` holds every CONFIG entry above it that is still in the log, in
index order; the configuration in force is the last of these.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgpack

from coord.raft.logview import LogView
from coord.raft.snapshot import SnapshotMeta
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term

_NO_INDEX = LogIndex(0)


class MembershipError(ValueError):
    """Bytes that are not a valid configuration."""


@dataclass(frozen=True, slots=True)
class Membership:
    voters: frozenset[NodeId]
    learners: frozenset[NodeId] = frozenset()
    addresses: tuple[tuple[NodeId, str], ...] = ()  # sorted (id, "host:port") of every member

    @staticmethod
    def of(
        voters: Iterable[NodeId],
        learners: Iterable[NodeId] = (),
        addresses: Mapping[NodeId, str] | None = None,
    ) -> Membership:
        return Membership(
            frozenset(voters), frozenset(learners), tuple(sorted((addresses or {}).items()))
        )

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def address_book(self) -> dict[NodeId, str]:
        return dict(self.addresses)

    def encode(self) -> bytes:
        raw: bytes = msgpack.packb(
            (sorted(self.voters), sorted(self.learners), [list(a) for a in self.addresses]),
            use_bin_type=True,
        )
        return raw

    @staticmethod
    def decode(data: bytes) -> Membership:
        try:
            voters, learners, addresses = msgpack.unpackb(data, raw=False, use_list=True)
            return Membership(
                frozenset(NodeId(int(v)) for v in voters),
                frozenset(NodeId(int(v)) for v in learners),
                tuple(sorted((NodeId(int(i)), str(a)) for i, a in addresses)),
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MembershipError(f"bad configuration entry: {exc}") from None


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add-learner"  # a new member that receives the log but does not vote
    ADD_VOTER = "add-voter"  # a new member that votes at once (only safe when caught up)
    PROMOTE = "promote"  # learner -> voter, once caught up
    REMOVE = "remove"  # voter or learner leaves (the leader too)


@dataclass(frozen=True, slots=True)
class ConfChange:
    kind: ChangeKind
    node: NodeId
    address: str = ""  # for ADD_*: where the other members reach it


def apply_change(current: Membership, change: ConfChange) -> Membership:
    """The configuration after `change`; raises MembershipError if it does not apply."""
    node, book = change.node, current.address_book()
    match change.kind:
        case ChangeKind.ADD_LEARNER | ChangeKind.ADD_VOTER:
            if node in current.members:
                raise MembershipError(f"node {node} is already a member")
            if not change.address:
                raise MembershipError(f"adding node {node} needs its address")
            book[node] = change.address
            if change.kind is ChangeKind.ADD_LEARNER:
                return Membership.of(current.voters, current.learners | {node}, book)
            return Membership.of(current.voters | {node}, current.learners, book)
        case ChangeKind.PROMOTE:
            if node not in current.learners:
                raise MembershipError(f"node {node} is not a learner")
            return Membership.of(current.voters | {node}, current.learners - {node}, book)
        case ChangeKind.REMOVE:
            if node not in current.members:
                raise MembershipError(f"node {node} is not a member")
            if current.voters == {node}:
                raise MembershipError(f"node {node} is the last voter")
            book.pop(node, None)
            return Membership.of(current.voters - {node}, current.learners - {node}, book)
    raise MembershipError(f"unknown change {change.kind}")  # pragma: no cover


def snapshot_membership(meta: SnapshotMeta) -> Membership:
    """The configuration a snapshot recorded (in force at its index)."""
    return Membership(frozenset(meta.voters), frozenset(meta.learners), meta.addresses)


def config_entry(term: Term, index: LogIndex, membership: Membership) -> Entry:
    return Entry(term, index, EntryKind.CONFIG, membership.encode())


class ConfigTracker:
    """The configuration in force on one member, following its log."""

    __slots__ = ("committed", "committed_index", "history", "pending")

    def __init__(self, committed: Membership, committed_index: LogIndex = _NO_INDEX) -> None:
        self.committed = committed
        self.committed_index = committed_index  # index of its entry (0: bootstrap/snapshot)
        self.pending: list[tuple[LogIndex, Term, Membership]] = []
        # A few earlier committed configurations, newest last: a snapshot taken at an
        # applied index below `committed_index` records the one in force there.
        self.history: list[tuple[LogIndex, Membership]] = []

    @property
    def current(self) -> Membership:
        return self.pending[-1][2] if self.pending else self.committed

    @property
    def has_pending(self) -> bool:
        return bool(self.pending)

    def appended(self, entries: Sequence[Entry]) -> bool:
        """CONFIG entries now in the log take effect; True if the configuration changed."""
        before = self.current
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                self.pending = [p for p in self.pending if p[0] < e.index]
                self.pending.append((e.index, e.term, Membership.decode(e.data)))
        return self.current != before

    def truncated(self, log_term: Callable[[LogIndex], Term], last: LogIndex) -> bool:
        """Drop pending entries that the log no longer holds; True if the config changed."""
        before = self.current
        self.pending = [p for p in self.pending if p[0] <= last and log_term(p[0]) == p[1]]
        return self.current != before

    def commit_to(self, index: LogIndex) -> None:
        while self.pending and self.pending[0][0] <= index:
            self.history = [*self.history[-7:], (self.committed_index, self.committed)]
            self.committed_index, _, self.committed = self.pending.pop(0)

    def at(self, index: LogIndex) -> Membership:
        """The committed configuration in force at `index` (<= the commit index)."""
        for at, m in reversed([*self.history, (self.committed_index, self.committed)]):
            if at <= index:
                return m
        return self.history[0][1] if self.history else self.committed


def tracker_from_log(
    log: LogView, committed: LogIndex, base: Membership, base_index: LogIndex = _NO_INDEX
) -> ConfigTracker:
    """Recover the configuration on restart: the newest CONFIG entry at or below
    `committed` (else `base`, the bootstrap or snapshot configuration at
    `base_index`), plus every CONFIG entry above it.  Reads the log backwards
    in batches and stops at the first committed CONFIG entry."""
    tracker = ConfigTracker(base, base_index)
    found: list[Entry] = []
    hi = LogIndex(log.last_index() + 1)
    lo_bound = max(log.first_index(), LogIndex(base_index + 1))
    while hi > lo_bound:
        lo = LogIndex(max(lo_bound, hi - 256))
        batch = _read_all(log, lo, hi)
        for e in reversed(batch):
            if e.kind is EntryKind.CONFIG:
                found.append(e)
                if e.index <= committed:
                    break
        if found and found[-1].index <= committed:
            break
        hi = lo
    found.reverse()
    tracker.appended(found)
    tracker.commit_to(committed)
    return tracker


def _read_all(log: LogView, lo: LogIndex, hi: LogIndex) -> list[Entry]:
    out: list[Entry] = []
    while lo < hi:
        got = log.entries(lo, hi, 1 << 30)
        out.extend(got)
        lo = LogIndex(lo + len(got))
    return out
