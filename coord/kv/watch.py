"""`kv.watch`: the long-polling RPC that serves the KV event log (docs/watch.md).

A watcher asks any member for the events of a key prefix from an index.  The
member answers from its own applied state: at once when it holds matching
events at or after that index, otherwise after its next apply (or after
`wait_s`, with no events).  The reply says which index to ask for next, so a
watcher can move to another member between calls (after a crash, a
partition, a leader change) and neither miss nor repeat an event.

Invariants:

* Any member serves watches, leader or not: events are applied state, the
  same on every member for every index above its floor, and served in log
  order.  A lagging member serves an older (never a different) prefix of the
  stream; a watcher ahead of it waits until it catches up.
* The wake-up cannot be lost: the handler takes the current `trio.Event`
  *before* it reads the state (no checkpoint between the two), and every
  committed apply sets that event afterwards (`KVStateMachine` apply
  listener -> `TrioToken.run_sync_soon`, since the apply runs in a worker
  thread).
* Reads of the event log run in worker threads (a scan decodes up to
  `max_scan` events: tens of ms that must not stall the Raft driver on the
  trio thread), at most `read_threads` at once through a limiter of their
  own, so watchers can never take the thread tokens the driver's persist and
  apply calls need.
* A call never outlives the caller's budget: the wait is capped by
  `MAX_WAIT` and by the caller's remaining time minus a margin; `close()`
  ends every wait at once (a member shutting down does not hold its
  watchers until the drain timeout).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import trio

from coord.kv.events import DEFAULT_MAX_SCAN, WatchBatch, WatchCompacted, encode_events
from coord.kv.machine import KVStateMachine
from coord.kv.types import MAX_KEY_BYTES
from coord.raft.types import LogIndex
from coord.rpc import CallContext, RemoteError, Request, Router, Semantics, request

OK = "OK"
MAX_WAIT = 30.0  # seconds a member holds one long poll at most
REPLY_MARGIN = 0.25  # seconds left to the caller for the reply to travel back
MAX_EVENTS = 10_000  # per call (a soft bound: whole entries)


@dataclass(frozen=True, slots=True)
class WatchReply:
    status: str  # always OK: every member serves watches (LeaderRouter's convention)
    events: bytes = b""  # coord.kv.events.encode_events(...)
    next_index: int = 0  # ask for this index next
    compacted: int = 0  # > 0: events asked for are gone; this is the floor (COMPACTED)
    leader: str = ""  # unused: no redirects for watches


@request("kv.watch", semantics=Semantics.AT_LEAST_ONCE)
@dataclass(frozen=True, slots=True)
class KvWatch(Request[WatchReply]):
    prefix: bytes  # keys starting with it (b"": every key)
    from_index: int  # the first log index of interest; 0: after this member's applied index
    max_events: int = 256  # a soft bound: whole entries only
    wait_s: float = 5.0  # how long to wait for a matching change when there is none yet


class WatchService:
    """Serves `kv.watch` from a member's state machine; see the module invariants."""

    def __init__(
        self,
        fsm: KVStateMachine,
        *,
        max_scan: int = DEFAULT_MAX_SCAN,
        read_threads: int = 2,  # 0: read on the trio thread (single-threaded test twins)
    ) -> None:
        self._fsm = fsm
        self._max_scan = max_scan
        self._limiter = trio.CapacityLimiter(read_threads) if read_threads else None
        self._changed = trio.Event()  # set (and replaced) after every committed apply
        self._closing = False  # set by close(): answer at once, wait no more

    def attach(self) -> None:
        """Hear of every apply.  Call from the trio thread that will serve watches."""
        token = trio.lowlevel.current_trio_token()

        def on_applied(index: LogIndex) -> None:  # in the applying (worker) thread
            # RunFinishedError: the member is gone and nobody is waiting any more
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self.notify)

        self._fsm.add_apply_listener(on_applied)

    def routes(self, router: Router) -> None:
        router.add(KvWatch, self.watch)

    def notify(self) -> None:
        """New state was committed (trio thread): wake every waiting watcher."""
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        """Stop waiting: every pending and later call answers with what it has."""
        self._closing = True
        self.notify()

    async def watch(self, req: KvWatch, ctx: CallContext) -> WatchReply:
        _check(req)
        wait = min(req.wait_s, MAX_WAIT, max(0.0, ctx.remaining() - REPLY_MARGIN))
        deadline = trio.current_time() + wait
        index = LogIndex(req.from_index or self._fsm.applied_index + 1)
        while True:  # each round waits for an apply or the deadline: bounded by wait
            changed = self._changed  # before the read: an apply after it sets this event
            got = await self._read(req, index)
            if isinstance(got, WatchCompacted):
                return WatchReply(OK, next_index=index, compacted=got.floor)
            index = got.next_index
            if got.events or index <= got.applied or self._closing:  # or more to scan
                return WatchReply(OK, encode_events(got.events), index)
            with trio.move_on_at(deadline) as scope:
                await changed.wait()
            if scope.cancelled_caught:
                return WatchReply(OK, encode_events(()), index)


    async def _read(self, req: KvWatch, index: LogIndex) -> WatchBatch | WatchCompacted:
        read = functools.partial(
            self._fsm.watch, req.prefix, index, req.max_events, self._max_scan
        )
        if self._limiter is None:
            return read()
        return await trio.to_thread.run_sync(read, limiter=self._limiter)


def _check(req: KvWatch) -> None:
    if req.from_index < 0:
        raise RemoteError("BAD_REQUEST", "from_index must be >= 0")
    if not 1 <= req.max_events <= MAX_EVENTS:
        raise RemoteError("BAD_REQUEST", f"max_events must be 1..{MAX_EVENTS}")
    if not req.wait_s >= 0:  # also refuses NaN
        raise RemoteError("BAD_REQUEST", "wait_s must be >= 0")
    if len(req.prefix) > MAX_KEY_BYTES:
        raise RemoteError("BAD_REQUEST", f"prefix longer than {MAX_KEY_BYTES} bytes")
