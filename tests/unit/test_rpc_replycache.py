"""The at-most-once reply cache core (sans-IO, time passed in)."""

from __future__ import annotations

import pytest

from coord.rpc.replycache import ClientId, Execute, Refuse, Replay, ReplyCache, Seq, Wait
from coord.wire import ErrorCode

C = ClientId(0xC1)


def _cache(ttl: float = 10.0, **kw: int) -> ReplyCache[str]:
    cache: ReplyCache[str] = ReplyCache(ttl, **kw)
    cache.open_session(C, now=0.0)
    return cache


def test_first_sighting_executes_then_replays() -> None:
    cache = _cache()
    assert cache.begin(C, Seq(1), 1, now=0.0) == Execute()
    assert cache.begin(C, Seq(1), 1, now=0.1) == Wait()  # still running
    assert cache.lookup(C, Seq(1)) == Wait()
    cache.complete(C, Seq(1), "reply-1", now=0.2)
    assert cache.begin(C, Seq(1), 1, now=0.3) == Replay("reply-1")
    assert cache.lookup(C, Seq(1)) == Replay("reply-1")


def test_unknown_session_is_refused_and_never_created_by_a_request() -> None:
    cache: ReplyCache[str] = ReplyCache(10.0)
    decision = cache.begin(ClientId(9), Seq(1), 1, now=0.0)
    assert isinstance(decision, Refuse) and decision.code == ErrorCode.SESSION_UNKNOWN
    assert cache.sessions == 0


def test_ack_drops_entries_below_it_and_their_retries_are_refused() -> None:
    cache = _cache()
    for seq in (1, 2, 3):
        assert cache.begin(C, Seq(seq), 1, now=0.0) == Execute()
        cache.complete(C, Seq(seq), f"r{seq}", now=0.0)
    assert len(cache) == 3
    assert cache.begin(C, Seq(4), 3, now=1.0) == Execute()  # ack=3: seqs 1, 2 are done
    assert len(cache) == 2
    refused = cache.begin(C, Seq(2), 3, now=1.0)
    assert isinstance(refused, Refuse) and refused.code == ErrorCode.REPLY_EXPIRED
    assert cache.begin(C, Seq(3), 3, now=1.0) == Replay("r3")  # at the mark: still kept


def test_ack_never_moves_backwards() -> None:
    cache = _cache()
    cache.begin(C, Seq(5), 5, now=0.0)
    refused = cache.begin(C, Seq(2), 1, now=0.0)  # a stale, reordered retry
    assert isinstance(refused, Refuse) and refused.code == ErrorCode.REPLY_EXPIRED


def test_idle_sessions_expire_with_everything_in_them() -> None:
    cache = _cache(ttl=10.0)
    cache.begin(C, Seq(1), 1, now=0.0)
    cache.complete(C, Seq(1), "r1", now=1.0)
    assert cache.begin(C, Seq(1), 1, now=10.9) == Replay("r1")  # activity renews the session
    assert cache.expire(now=20.0) == []
    assert cache.expire(now=21.0) == [C]
    refused = cache.begin(C, Seq(1), 1, now=21.0)
    assert isinstance(refused, Refuse) and refused.code == ErrorCode.SESSION_UNKNOWN


def test_completion_after_the_entry_was_dropped_is_ignored() -> None:
    cache = _cache()
    assert cache.begin(C, Seq(1), 1, now=0.0) == Execute()
    cache.begin(C, Seq(2), 2, now=0.0)  # ack passes seq 1 while it still runs
    cache.complete(C, Seq(1), "late", now=0.1)
    refused = cache.lookup(C, Seq(1))
    assert isinstance(refused, Refuse) and refused.code == ErrorCode.REPLY_EXPIRED


def test_limits_bound_memory() -> None:
    cache = _cache(max_entries_per_session=2)
    cache.begin(C, Seq(1), 1, now=0.0)
    cache.begin(C, Seq(2), 1, now=0.0)
    overloaded = cache.begin(C, Seq(3), 1, now=0.0)
    assert isinstance(overloaded, Refuse) and overloaded.code == ErrorCode.OVERLOADED
    small: ReplyCache[str] = ReplyCache(10.0, max_sessions=2)
    for client in (1, 2, 3):
        small.open_session(ClientId(client), now=float(client))
    assert small.sessions == 2
    evicted = small.begin(ClientId(1), Seq(1), 1, now=4.0)  # the oldest one went
    assert isinstance(evicted, Refuse) and evicted.code == ErrorCode.SESSION_UNKNOWN


def test_reopening_a_session_refreshes_but_keeps_entries() -> None:
    cache = _cache(ttl=10.0)
    cache.begin(C, Seq(1), 1, now=0.0)
    cache.complete(C, Seq(1), "r1", now=0.0)
    cache.open_session(C, now=9.0)
    assert cache.begin(C, Seq(1), 1, now=18.0) == Replay("r1")


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ReplyCache(0.0)
