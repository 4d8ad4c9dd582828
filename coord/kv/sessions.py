"""Client sessions inside the replicated state machine (Ongaro's thesis §6.3).

Every mutation arrives as `ClientRequest(client_id, seq, acked, command)`.
The rules, applied identically by every replica:

* A session is created by a `RegisterClient` entry; its id is that entry's
  log index, so ids are unique forever and never reused after expiry.
* Time is the log time of the entry being applied (never a local clock).  A
  session whose last activity is more than `session_ttl_ms` before the
  current log time is expired: it is removed, and any command for it (or for
  an id never registered) gets SESSION_EXPIRED without being executed.
* `acked` (the client holds every reply up to it) only moves forward; replies
  with seq <= acked are dropped.  A request with seq <= acked is a stale
  retransmission: STALE_SEQUENCE, not executed (its effect already happened).
* A request whose seq has a cached reply is a duplicate: the cached reply is
  returned and the command is not executed again.
* Otherwise the command is executed once and its reply cached under seq, so
  any number of commands may be outstanding; past `max_outstanding` cached
  replies a new seq is refused (TOO_MANY_OUTSTANDING, not executed, not cached,
  so the client may send it again once it acknowledges replies).
* Every entry that names a live session counts as activity.  Idle sessions are
  collected through the store's lazy idle index (`coord.kv.store`): each
  applied entry examines at most `expire_batch` index entries, by indexed
  time, and removes the idle sessions among them; the expiry check on lookup
  makes the result independent of how far collection has got.
* `EndSession` removes a live session at once (an unknown or expired one gets
  SESSION_EXPIRED).
* Whenever a session goes away - collected, found expired on lookup, or
  ended - `on_end(client_id)` is called once, in the same transaction, so
  extensions can release what the session held (e.g. open files).
"""

from __future__ import annotations

from collections.abc import Callable

from coord.kv.commands import ClientRequest, EndSession, KeepAlive
from coord.kv.results import (
    ErrorCode,
    ErrorResult,
    KeepAliveResult,
    RegisterResult,
    Result,
    SessionEndedResult,
    decode_result,
    encode_result,
)
from coord.kv.store import KVWriteView
from coord.kv.types import ClientId, KVConfig, LogTime, SeqNo, SessionRecord

OnEnd = Callable[[ClientId], None]


def _ignore(client_id: ClientId) -> None:
    return None


def is_expired(record: SessionRecord, now: LogTime, config: KVConfig) -> bool:
    return now > record.last_activity + config.session_ttl_ms


def register(view: KVWriteView, client_id: ClientId, now: LogTime, config: KVConfig) -> Result:
    view.put_session(client_id, SessionRecord(now, SeqNo(0), 0))
    return RegisterResult(client_id, config.session_ttl_ms)


def expire_idle(
    view: KVWriteView, now: LogTime, config: KVConfig, on_end: OnEnd = _ignore
) -> list[ClientId]:
    """Remove up to `expire_batch` expired sessions; return their ids."""
    doomed = view.idle_sessions(LogTime(now - config.session_ttl_ms), config.expire_batch)
    for client_id in doomed:
        view.delete_session(client_id)
        on_end(client_id)
    return doomed


def _live(
    view: KVWriteView, client_id: ClientId, now: LogTime, config: KVConfig, on_end: OnEnd
) -> SessionRecord | None:
    """The client's session if it is alive at `now`; an expired one is removed."""
    record = view.session(client_id)
    if record is not None and is_expired(record, now, config):
        view.delete_session(client_id)
        on_end(client_id)
        return None
    return record


def _expired(client_id: ClientId) -> ErrorResult:
    return ErrorResult(ErrorCode.SESSION_EXPIRED, f"session {client_id} expired or unknown")


def _acknowledge(
    view: KVWriteView, client_id: ClientId, record: SessionRecord, acked: SeqNo, now: LogTime
) -> tuple[LogTime, SeqNo, int]:
    """Advance the low-water mark, drop the replies it covers, and count activity:
    the new (last_activity, acked, outstanding)."""
    # Fields, not a new SessionRecord (nor dataclasses.replace): this runs for every
    # applied command on every replica, and `run` builds the record once at its end.
    outstanding = record.outstanding
    if acked > record.acked:
        if outstanding:  # nothing cached, nothing to prune (no cursor, no lookups)
            outstanding -= view.prune_replies(client_id, acked, record.acked)
    else:
        acked = record.acked
    return LogTime(max(record.last_activity, now)), acked, outstanding


def keep_alive(
    view: KVWriteView, msg: KeepAlive, now: LogTime, config: KVConfig, on_end: OnEnd = _ignore
) -> Result:
    record = _live(view, msg.client_id, now, config, on_end)
    if record is None:
        return _expired(msg.client_id)
    record = SessionRecord(*_acknowledge(view, msg.client_id, record, msg.acked, now))
    view.put_session(msg.client_id, record)
    return KeepAliveResult(LogTime(record.last_activity + config.session_ttl_ms))


def end_session(
    view: KVWriteView, msg: EndSession, now: LogTime, config: KVConfig, on_end: OnEnd = _ignore
) -> Result:
    if _live(view, msg.client_id, now, config, on_end) is None:
        return _expired(msg.client_id)
    view.delete_session(msg.client_id)
    on_end(msg.client_id)
    return SessionEndedResult(msg.client_id)


def run_request(
    view: KVWriteView,
    request: ClientRequest,
    now: LogTime,
    config: KVConfig,
    execute: Callable[[], Result],
    on_end: OnEnd = _ignore,
) -> Result:
    """Execute `request.command` (through `execute`) at most once; see the module rules."""
    return run(view, request.client_id, request.seq, request.acked, now, config, execute, on_end)


def run(
    view: KVWriteView,
    cid: ClientId,
    seq: SeqNo,
    acked: SeqNo,
    now: LogTime,
    config: KVConfig,
    execute: Callable[[], Result],
    on_end: OnEnd = _ignore,
) -> Result:
    """`run_request` on the request's fields (the apply loop's fast path has no
    ClientRequest value to hand over)."""
    record = _live(view, cid, now, config, on_end)
    if record is None:
        return _expired(cid)
    last, acked, outstanding = _acknowledge(view, cid, record, acked, now)
    result: Result
    if seq <= acked:
        result = ErrorResult(ErrorCode.STALE_SEQUENCE, f"seq {seq} <= acked {acked}")
    elif outstanding and (cached := view.reply(cid, seq)) is not None:
        # (outstanding counts the cached replies: with none, skip the lookup)
        result = decode_result(cached)
    elif outstanding >= config.max_outstanding:
        result = ErrorResult(
            ErrorCode.TOO_MANY_OUTSTANDING, f"{outstanding} replies not acknowledged"
        )
    else:
        result = execute()
        view.put_reply(cid, seq, encode_result(result))
        outstanding += 1
    view.put_session(cid, SessionRecord(last, acked, outstanding))
    return result
