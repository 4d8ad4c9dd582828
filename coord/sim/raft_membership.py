"""Simulated Raft clusters whose membership changes while faults happen.

`MembershipSim` is `RaftSim` (same network, disks, faults, clients and
safety checks after every step) plus an operator who, during the faulty
phase, replaces members one at a time the way `ddfs raft` does: add a new
node as a learner, promote it once the leader accepts, then remove an old
member, often the current leader; and who now and then asks the leader to
transfer leadership (TimeoutNow) to a random voter.  Changes are retried
until the leader's *committed* configuration shows them, because a
proposal may be refused (a change in progress, a learner behind, a new
leader that has not committed in its term, a transfer) or lost with its
leader.  Joiners start empty, knowing no configuration (like `ddfs meta
--join`), and learn it from the log.  Runs with odd seeds serve reads under
the leader lease (`RaftConfig.lease_reads`).

Checked on top of `RaftChecker`'s invariants (election safety - no two
leaders in one term, ever - log matching, leader completeness, commit
agreement, durability against the configuration in force at the commit
index, linearizable reads): after healing, every member of the final
configuration applies every acknowledged command.  A failure names its
seed: `run_membership_sim(seed, nodes)` reproduces it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from coord.raft.core import RaftNode
from coord.raft.membership import ChangeKind, ConfChange, Membership
from coord.raft.ready import Proposed, Role
from coord.raft.types import NodeId
from coord.sim.raft import RaftSim, SimDisk, SimParams, SimReport


@dataclass(frozen=True, slots=True)
class Step:
    kind: ChangeKind
    node: NodeId

    def done(self, m: Membership) -> bool:
        if self.kind is ChangeKind.ADD_LEARNER:
            return self.node in m.members
        if self.kind is ChangeKind.PROMOTE:
            return self.node in m.voters
        return self.node not in m.members


class MembershipSim(RaftSim):
    """A RaftSim with an operator changing the membership during the faulty phase."""

    def __init__(self, params: SimParams, node_cls: type[RaftNode] = RaftNode) -> None:
        self.joiners: set[NodeId] = set()  # nodes started empty during the run
        if params.seed % 2:
            # Odd seeds serve reads under the leader lease (the simulated clocks agree
            # exactly, so a drift bound of one tick is generous); the linearizability
            # check then covers lease reads across transfers and removals too.
            lease = dataclasses.replace(params.raft, lease_reads=True, clock_drift_bound=1.0)
            params = dataclasses.replace(params, raft=lease)
        super().__init__(params, node_cls)
        self.plan: list[Step] = []
        self.changes_done = 0  # steps whose effect reached the committed configuration
        self.transfers = 0  # transfers started
        self.leader_removals = 0  # committed removals that were proposed by the removed leader
        self._removing_leader: set[NodeId] = set()
        self._plan_replacements()

    def _plan_replacements(self) -> None:
        """Replace one or two members, one change at a time, in either order."""
        rng, next_id = self.rng, len(self.ids) + 1
        for _ in range(rng.randint(1, 2)):
            new = NodeId(next_id)
            next_id += 1
            add = [Step(ChangeKind.ADD_LEARNER, new), Step(ChangeKind.PROMOTE, new)]
            # The node to remove is chosen when the step runs (often the leader).  Half
            # the 5-node runs remove first, passing through 4 voters (3 nodes would pass
            # through 2, which the faults would keep unavailable most of the run).
            remove = [Step(ChangeKind.REMOVE, NodeId(0))]
            first = len(self.ids) >= 5 and rng.random() < 0.5
            self.plan += remove + add if first else add + remove

    def _bootstrap_membership(self, nid: NodeId) -> Membership | None:
        return Membership.of(()) if nid in self.joiners else None

    def _clients(self) -> None:
        super()._clients()
        if self.now % 3 == 0:
            self._operator()
        if self.rng.random() < 0.01:
            self._transfer()

    def _operator(self) -> None:
        """Push the plan one step: skip what is done, (re)propose what is not."""
        leader = self._leader()
        core = self.cores[leader] if leader is not None else None
        if core is None or not self.plan:
            return
        committed = core.conf.committed
        step = self.plan[0]
        if step.kind is ChangeKind.REMOVE and step.node == 0:
            step = self.plan[0] = Step(ChangeKind.REMOVE, self._victim(core))
        if step.done(committed):
            self.plan.pop(0)
            self.changes_done += 1
            if step.kind is ChangeKind.REMOVE and step.node in self._removing_leader:
                self.leader_removals += 1
            self.trace.append((self.now, "conf", f"{step.kind.value} {step.node} committed"))
            return
        if step.kind is ChangeKind.ADD_LEARNER and step.node not in self.joiners:
            self._join(step.node)
        change = ConfChange(step.kind, step.node, f"sim:{step.node}")
        result = core.propose_conf_change(change)
        if isinstance(result, Proposed) and step.kind is ChangeKind.REMOVE and step.node == leader:
            self._removing_leader.add(step.node)
        self.trace.append((self.now, "conf", f"{change} at {leader}: {result}"))
        if isinstance(result, Proposed) and leader is not None:
            self._process(leader, core)

    def _victim(self, core: RaftNode) -> NodeId:
        """An original voter to remove: the leader half of the time."""
        voters = sorted(v for v in core.conf.committed.voters if v not in self.joiners)
        if not voters:
            voters = sorted(core.conf.committed.voters)
        if core.id in voters and self.rng.random() < 0.5:
            return core.id
        return self.rng.choice(voters)

    def _join(self, nid: NodeId) -> None:
        """Start a new, empty node that knows no configuration (ddfs meta --join)."""
        self.joiners.add(nid)
        self.ids.append(nid)
        self.disks[nid] = SimDisk()
        self.applied[nid] = []
        self.cores[nid] = None
        self._start(nid)

    def _transfer(self) -> None:
        leader = self._leader()
        core = self.cores[leader] if leader is not None else None
        if core is None or core.role is not Role.LEADER:
            return
        targets = sorted(core.voters.voters - {core.id})
        if targets:
            target = self.rng.choice(targets)
            self.trace.append((self.now, "transfer", f"{leader} -> {target}"))
            core.transfer_leadership(target, float(self.now))
            self.transfers += 1
            assert leader is not None
            self._process(leader, core)


def run_membership_sim(seed: int, nodes: int = 3) -> tuple[SimReport, MembershipSim]:
    """Reproduce one simulated run with membership changes."""
    sim = MembershipSim(SimParams(seed=seed, nodes=nodes))
    return sim.run(), sim


__all__ = ["MembershipSim", "run_membership_sim"]
