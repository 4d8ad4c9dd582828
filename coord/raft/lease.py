"""The leader lease for lease-based reads (thesis §6.4.1), sans-IO.

With `RaftConfig.lease_reads` every heartbeat broadcast opens a new round
(the same counter ReadIndex uses, so its acknowledgements still confirm
ReadIndex rounds).  When a quorum of voters has acknowledged round r, each
of them heard from this leader at or after the time r was *sent*, and
(leader stickiness, §4.2.3) will not vote for anyone else for
`election_timeout_min` of its own clock after that.  So no other leader can
exist before `sent(r) + election_timeout_min`, measured on clocks that may
disagree by up to `clock_drift_bound` over that interval: the lease ends at
`sent(r) + election_timeout_min - clock_drift_bound`, and until then the
leader may answer reads from its own state without a round trip.

Invariants: round ids strictly increase; `start` only moves forward within
a term; a lease is never valid when the owner is not leader (the core calls
`reset` whenever leadership starts or ends, or a transfer starts, since a
transfer deliberately lets the target bypass stickiness).  Send times are the
core's last known `now`, which is never later than the real send time, so
the lease computed from it is never longer than the true one.
"""

from __future__ import annotations

from collections import deque

#: How many unacknowledged rounds are remembered; an older ack cannot extend the lease.
_MAX_ROUNDS = 256


class LeaderLease:
    __slots__ = ("duration", "rounds", "start")

    def __init__(self, duration: float) -> None:
        self.duration = duration  # election_timeout_min - clock_drift_bound
        self.rounds: deque[tuple[int, float]] = deque()  # (round id, send time), increasing
        self.start = float("-inf")  # send time of the newest quorum-acknowledged round

    def reset(self) -> None:
        self.rounds.clear()
        self.start = float("-inf")

    def sent(self, round_id: int, now: float) -> None:
        self.rounds.append((round_id, now))
        if len(self.rounds) > _MAX_ROUNDS:
            self.rounds.popleft()

    def acked(self, quorum_round: int) -> None:
        """A quorum of voters acknowledged every round <= quorum_round."""
        while self.rounds and self.rounds[0][0] <= quorum_round:
            self.start = max(self.start, self.rounds.popleft()[1])

    def valid(self, now: float) -> bool:
        return now < self.start + self.duration
