"""Two-phase commit with durable logs, recovery, cooperative termination, and
decisions recorded in the replicated KV store so that nothing blocks.

See docs/twopc.md.  Modules:

  types.py        ids, votes, decisions, states + transition tables, named steps, config
  messages.py     PREPARE, VOTE, DECISION, ACK, QUERY, QUERY_REPLY (RPC notifications)
  records.py      log records, their codec, and the effects cores return
  machine.py      per-transaction state holders that move only along their table
  coordinator.py  the coordinator core (sans-IO)
  participant.py  the participant core (sans-IO)
  log.py          TwoPcLog protocol + MemoryLog twin;  lmdb_log.py: LmdbLog
  decision.py     DecisionStore protocol + MemoryDecisionStore;  kv_decision.py: on Raft KV
  sim.py          deterministic simulator;  sim_checks.py: its safety/liveness checks
  driver.py       trio driver running one core over RPC
  node.py         a 2PC node process: driver + RPC server + control requests
"""

from coord.twopc.coordinator import Coordinator
from coord.twopc.decision import DecisionStore, DecisionStoreError, MemoryDecisionStore
from coord.twopc.log import MemoryLog, TwoPcLog
from coord.twopc.machine import TransitionError
from coord.twopc.participant import Participant
from coord.twopc.types import (
    Answer,
    CoordState,
    CoordStep,
    Decision,
    NodeName,
    PartState,
    PartStep,
    TwoPcConfig,
    TxId,
    Vote,
    Write,
)

__all__ = [
    "Answer",
    "CoordState",
    "CoordStep",
    "Coordinator",
    "Decision",
    "DecisionStore",
    "DecisionStoreError",
    "MemoryDecisionStore",
    "MemoryLog",
    "NodeName",
    "PartState",
    "PartStep",
    "Participant",
    "TransitionError",
    "TwoPcConfig",
    "TwoPcLog",
    "TxId",
    "Vote",
    "Write",
]
