"""Majority arithmetic over a fixed voter set (§5.2 elections, §5.3/§5.4.2 commitment).

Invariant: any two majorities of the same voter set intersect — the fact that
election safety and leader completeness rest on.  Joint consensus (Raft part
2) will add a JointConfig with the same two methods, requiring both halves.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from coord.raft.types import LogIndex, NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class MajorityConfig:
    voters: frozenset[NodeId]

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def committed_index(self, match: Mapping[NodeId, LogIndex]) -> LogIndex:
        """The largest index that a majority of voters hold (missing voters count as 0)."""
        return LogIndex(self.quorum_value(match))

    def quorum_value(self, values: Mapping[NodeId, int]) -> int:
        """The largest v such that a majority of voters have a value >= v."""
        ordered = sorted((values.get(v, 0) for v in self.voters), reverse=True)
        return ordered[self.quorum - 1]

    def vote_result(self, votes: Mapping[NodeId, bool]) -> VoteResult:
        granted = sum(1 for v in self.voters if votes.get(v) is True)
        rejected = sum(1 for v in self.voters if votes.get(v) is False)
        if granted >= self.quorum:
            return VoteResult.WON
        if rejected > len(self.voters) - self.quorum:
            return VoteResult.LOST
        return VoteResult.PENDING

    def has_quorum(self, members: Iterable[NodeId]) -> bool:
        return len(self.voters.intersection(members)) >= self.quorum
