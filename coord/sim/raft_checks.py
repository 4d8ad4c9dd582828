"""Raft safety invariants, checked incrementally after every simulator step.

Each check is O(1) or O(new entries) per step so that they can run after
*every* step of thousands of runs:

* election safety (§5.2): at most one leader per term, over the whole run;
* log matching (§5.3): an (index, term) pair always carries the same data and
  follows the same previous term, which by induction makes two logs that
  share an (index, term) identical up to it;
* leader completeness (§5.4): a node that becomes leader of term T holds the
  highest entry committed in a term before T (with log matching: all of them);
  the commit term of an index is the term of the node first seen committing it,
  which is the committing leader because every check runs after every step;
* commit agreement / state-machine safety (§5.4.3): no two nodes commit or
  apply different entries at one index;
* durability: the highest committed entry is in the fsynced (crash-proof)
  log of a majority of the voters the committing leader counted (its
  configuration in force when it committed: a configuration takes effect
  when appended, so that may be a newer, uncommitted one than the entry's),
  so no committed entry can be lost by crashes;
* linearizable reads: a ReadState's index covers every write acknowledged to
  a client before the read was issued, and the node has applied it;
* snapshots: an installed snapshot holds exactly the committed entries up to
  its index; entries compacted away from a log are covered by that node's
  snapshot, so they count as held (commit agreement and durability skip them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from coord.raft.core import RaftNode
from coord.raft.membership import Membership
from coord.raft.memlog import MemLog
from coord.raft.ready import Role
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term


class SafetyViolation(AssertionError):
    """An invariant broke; the simulator adds the seed and a trace of recent events."""


class RaftChecker:
    __slots__ = (
        "commit_term",
        "commit_voters",
        "committed",
        "committed_configs",
        "configs",
        "entry_chain",
        "leaders",
        "node_commit",
    )

    def __init__(self, voters: Iterable[NodeId]) -> None:
        self.configs: dict[tuple[int, int], Membership] = {}  # (i, t) of CONFIG entries
        # (index, membership) of committed CONFIG entries, in index order; [0] is the bootstrap
        self.committed_configs: list[tuple[int, Membership]] = [(0, Membership.of(voters))]
        self.commit_voters = frozenset(voters)  # voters the leader counted for the last commit
        self.leaders: dict[Term, NodeId] = {}  # term -> the one leader ever seen in it
        self.entry_chain: dict[tuple[int, int], tuple[bytes, int]] = {}  # (i, t) -> (data, prev t)
        self.committed: list[tuple[int, bytes | None]] = [(0, b"")]  # index -> (term, data)
        self.commit_term: list[int] = [0]  # index -> term in which it was first seen committed
        self.node_commit: dict[NodeId, int] = {}  # highest commit index verified per node

    @property
    def commit_index(self) -> int:
        return len(self.committed) - 1

    def after_step(self, nid: NodeId, core: RaftNode) -> None:
        """Role and commit checks for the node that just stepped, ticked or advanced."""
        if core.role is Role.LEADER:
            holder = self.leaders.get(core.term)
            if holder is None:
                self.leaders[core.term] = nid
                self._check_leader_completeness(nid, core)
            elif holder != nid:
                raise SafetyViolation(f"election safety: {holder} and {nid} lead term {core.term}")
        commit = core.commit_index
        if commit > self.node_commit.get(nid, 0):
            self._record_commits(nid, core, commit)

    def _check_leader_completeness(self, nid: NodeId, core: RaftNode) -> None:
        c = self.commit_index
        while c > 0 and self.commit_term[c] >= core.term:
            c -= 1  # committed by a later leader while this one was being elected
        if c == 0:
            return
        if c < core.log.first_index() - 1:
            return  # inside its snapshot, which `installed`/`applied` checked entry by entry
        want = self.committed[c][0]
        have = core.log.term(LogIndex(c)) if c <= core.log.last_index() else None
        if have != want:
            raise SafetyViolation(
                f"leader completeness: leader {nid} of term {core.term} has term {have} at "
                f"committed index {c} (committed term {want})"
            )

    def _record_commits(self, nid: NodeId, core: RaftNode, commit: int) -> None:
        start = self.node_commit.get(nid, 0) + 1
        floor = core.log.first_index() - 1
        for i in range(start, commit + 1):
            if i < floor:
                if i > self.commit_index:
                    raise SafetyViolation(f"node {nid} holds a snapshot beyond any commit ({i})")
                continue  # compacted: its snapshot was checked entry by entry
            term = core.log.term(LogIndex(i))
            if i <= self.commit_index:
                if self.committed[i][0] != term:
                    raise SafetyViolation(
                        f"commit agreement: node {nid} commits term {term} at {i}, "
                        f"others committed term {self.committed[i][0]}"
                    )
            else:
                self.committed.append((term, None))
                self.commit_term.append(core.term)
                config = self.configs.get((i, term))
                if config is not None:
                    self.committed_configs.append((i, config))
                self.commit_voters = core.membership.voters  # the first to commit is the leader
        self.node_commit[nid] = commit

    def restarted(self, nid: NodeId, durable_commit: int) -> None:
        self.node_commit[nid] = durable_commit

    def appended(self, nid: NodeId, log: MemLog, entries: Iterable[Entry]) -> None:
        """Log matching, for entries just written to nid's log (after the write)."""
        for e in entries:
            prev = log.term(LogIndex(e.index - 1))
            key = (e.index, e.term)
            seen = self.entry_chain.setdefault(key, (e.data, prev))
            if e.kind is EntryKind.CONFIG:
                self.configs.setdefault(key, Membership.decode(e.data))
            if seen != (e.data, prev):
                raise SafetyViolation(
                    f"log matching: node {nid} has ({e.index}, {e.term}) = {e.data!r} after term "
                    f"{prev}; elsewhere {seen[0]!r} after term {seen[1]}"
                )

    def applied(self, nid: NodeId, entry: Entry) -> None:
        """State-machine safety: everyone applies the same entry at an index."""
        i = entry.index
        if i > self.commit_index:
            raise SafetyViolation(f"node {nid} applied {i} beyond any known commit")
        term, data = self.committed[i]
        if term != entry.term or (data is not None and data != entry.data):
            raise SafetyViolation(
                f"state-machine safety: node {nid} applied ({i}, {entry.term}, {entry.data!r}); "
                f"committed was ({i}, {term}, {data!r})"
            )
        if data is None:
            self.committed[i] = (term, entry.data)

    @property
    def membership(self) -> Membership:
        """The newest committed configuration."""
        return self.committed_configs[-1][1]

    def installed(self, nid: NodeId, state: list[Entry]) -> None:
        """A snapshot's content is exactly the committed entries 1 .. its index."""
        for entry in state:
            self.applied(nid, entry)

    def durable_majority(self, durable_logs: Mapping[NodeId, MemLog]) -> None:
        """The newest committed entry survives any crash: a majority of the voters
        of its configuration fsynced it (in its log or, compacted, in its snapshot)."""
        c = self.commit_index
        if c == 0:
            return
        want = self.committed[c][0]
        voters = self.commit_voters
        holders = sum(
            1
            for nid, log in durable_logs.items()
            if nid in voters
            and (
                c < log.first_index() - 1  # compacted: in the node's durable snapshot
                or (c <= log.last_index() and log.term(LogIndex(c)) == want)
            )
        )
        quorum = len(voters) // 2 + 1
        if holders < quorum:
            raise SafetyViolation(
                f"durability: committed index {c} (term {want}) is fsynced on only {holders} "
                f"voters of {sorted(voters)}, quorum is {quorum}"
            )
