"""`KvService.submit_deferred` (the task-free `kv.submit` route) gives the
same reply as the async `submit` for every outcome of a proposal: a result,
a refusal at proposal time (NOT_LEADER, UNAVAILABLE, BUSY), a lost proposal
(LOST), no result (INTERNAL) and a body a client may not propose
(BAD_COMMAND, before anything is proposed); its stop hook abandons the
proposal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from coord.kv.commands import ClientRequest, ExtCommand, Put, encode_body
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.results import PutResult
from coord.kv.service import KvService, KvSubmit
from coord.kv.types import ClientId, SeqNo
from coord.raft.driver import Busy, ProposalLost, RaftDriver, RaftUnavailable
from coord.raft.types import LogIndex, NodeId
from coord.rpc import RemoteError

LEADER = "10.0.0.2:1"
PUT = encode_body(ClientRequest(ClientId(3), SeqNo(1), SeqNo(0), Put(b"k", b"v" * 256)))
Outcome = Applied | ProposalLost | RaftUnavailable


class OutcomeDriver:
    """Answers every proposal (awaited or by callback) with `outcome`."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.proposed: list[bytes] = []
        self.abandoned: list[object] = []

    def _check(self, data: bytes) -> None:
        if isinstance(self.outcome, RaftUnavailable) and not isinstance(
            self.outcome, ProposalLost
        ):
            raise self.outcome
        self.proposed.append(data)

    async def propose(self, data: bytes, *, early: bool = False) -> Applied:
        self._check(data)
        if isinstance(self.outcome, RaftUnavailable):
            raise self.outcome
        return self.outcome

    def propose_nowait(
        self, data: bytes, on_done: Callable[[Applied | ProposalLost], None], *,
        early: bool = False,
    ) -> object:
        self._check(data)
        assert early  # the KV service's replies carry outcomes only
        assert not isinstance(self.outcome, RaftUnavailable) or isinstance(
            self.outcome, ProposalLost)
        on_done(self.outcome)  # answered at once: the server must cope
        return "proposal-token"

    def abandon(self, proposal: object) -> None:
        self.abandoned.append(proposal)

    async def read_barrier(self) -> LogIndex:
        return LogIndex(0)


def _service(driver: OutcomeDriver) -> KvService:
    return KvService(cast(RaftDriver[Applied], driver), cast(KVStateMachine, None),
                     {NodeId(2): LEADER})


async def _both(outcome: Outcome, body: bytes = PUT) -> tuple[Any, Any, OutcomeDriver]:
    """(async reply or error, deferred reply or error, the deferred run's driver)."""
    try:
        service = _service(OutcomeDriver(outcome))
        awaited: Any = await service.submit(KvSubmit(body), cast(Any, None))
    except RemoteError as exc:
        awaited = (exc.code, exc.message)
    driver = OutcomeDriver(outcome)
    replies: list[Any] = []
    try:
        _service(driver).submit_deferred(KvSubmit(body), cast(Any, None), replies.append)
    except RemoteError as exc:  # the server turns it into the same error reply
        replies.append(exc)
    assert len(replies) == 1
    deferred = replies[0]
    if isinstance(deferred, RemoteError):
        deferred = (deferred.code, deferred.message)
    return awaited, deferred, driver


@pytest.mark.parametrize("outcome", [
    Applied(LogIndex(4), PutResult(LogIndex(4), 1)),
    Applied(LogIndex(5), None),
    ProposalLost("overwritten", NodeId(2)),
    RaftUnavailable("not leader", NodeId(2)),
    RaftUnavailable("no leader", None),
    Busy("busy", NodeId(1)),
], ids=["ok", "no-result", "lost", "not-leader", "unavailable", "busy"])
async def test_deferred_replies_equal_the_async_ones(outcome: Outcome) -> None:
    awaited, deferred, _ = await _both(outcome)
    assert deferred == awaited
    if isinstance(outcome, Applied) and outcome.result is not None:
        assert deferred.status == "OK"


async def test_a_body_a_client_may_not_propose_is_refused_before_proposing() -> None:
    bad = encode_body(ClientRequest(ClientId(3), SeqNo(1), SeqNo(0), ExtCommand(1, b"x")))
    awaited, deferred, driver = await _both(Applied(LogIndex(1), None), bad)
    assert deferred == awaited and deferred[0] == "BAD_COMMAND" and driver.proposed == []


def test_the_stop_hook_abandons_the_proposal() -> None:
    class Silent(OutcomeDriver):
        def propose_nowait(self, data: bytes, on_done: Any, *, early: bool = False) -> object:
            self.proposed.append(data)
            return "token"

    driver = Silent(Applied(LogIndex(1), None))
    replies: list[Any] = []
    stop = _service(driver).submit_deferred(KvSubmit(PUT), cast(Any, None), replies.append)
    assert replies == [] and stop is not None and len(driver.proposed) == 1
    stop()
    assert driver.abandoned == ["token"]
