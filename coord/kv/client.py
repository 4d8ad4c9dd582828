"""The client's half of a session: sequence numbers and the acknowledgement mark.

Sans-IO bookkeeping for a KV client (thesis §6.3).  Invariants:

* seq numbers are handed out 1, 2, 3, ... and a retransmission of a request
  reuses its seq (build the request once, resend the same value);
* `acked` is the largest n such that the replies of 1..n have all been
  received; it is what the client may tell the servers to forget, so it only
  counts replies actually delivered to the caller, in any order.
"""

from __future__ import annotations

from coord.kv.commands import ClientRequest, Command, KeepAlive
from coord.kv.types import ClientId, SeqNo


class ClientSession:
    __slots__ = ("_acked", "_done", "_next", "client_id")

    def __init__(self, client_id: ClientId) -> None:
        self.client_id = client_id
        self._next = 1  # seq of the next new request
        self._acked = 0  # replies 1.._acked received
        self._done: set[int] = set()  # received replies with seq > _acked + 1

    @property
    def acked(self) -> SeqNo:
        return SeqNo(self._acked)

    @property
    def outstanding(self) -> int:
        """Requests issued whose reply has not been received."""
        return self._next - 1 - self._acked - len(self._done)

    def request(self, command: Command) -> ClientRequest:
        """A new request for `command`; resend this same value on retries."""
        req = ClientRequest(self.client_id, SeqNo(self._next), SeqNo(self._acked), command)
        self._next += 1
        return req

    def issue(self) -> tuple[SeqNo, SeqNo]:
        """(seq, acked) for a new request, without building a `ClientRequest`
        (the KV client encodes hot commands straight to bytes); the caller
        resends the same encoding on retries."""
        seq = self._next
        self._next = seq + 1
        return SeqNo(seq), SeqNo(self._acked)

    def keep_alive(self) -> KeepAlive:
        return KeepAlive(self.client_id, SeqNo(self._acked))

    def completed(self, seq: SeqNo) -> None:
        """The reply for `seq` reached the caller (duplicates are ignored)."""
        if not 1 <= seq < self._next:
            raise ValueError(f"seq {seq} was never issued")
        if seq <= self._acked:
            return
        if seq == self._acked + 1 and not self._done:
            self._acked = seq  # the usual case (one request at a time): no set traffic
            return
        self._done.add(seq)
        while self._acked + 1 in self._done:
            self._acked += 1
            self._done.remove(self._acked)
