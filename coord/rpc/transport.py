"""A trio stream that speaks frames, plus the connector interface.

`FrameStream` is the only place that moves frames between a
`trio.abc.Stream` and the sans-IO `FrameDecoder`, and the only place that
touches Lamport time: every frame it builds is stamped with `clock.tick()`
and every frame it returns has been merged with `clock.observe()`.

Invariants:
- Outgoing frames are queued synchronously (`queue_frame`) and written by
  `flush`; at most one task writes at a time.  Frames queued while another
  task is writing are sent by that task's loop, so small frames from many
  tasks coalesce into one `send_all` (batching) and nobody waits for a
  writer task to be scheduled.
- A send that fails or is interrupted leaves the byte stream in an unknown
  state, so the stream is marked broken and every later use raises
  `ConnectionLost`.
- Large bodies are never concatenated with their header: they are written
  as separate buffers (no copy of big payloads).
- On a TCP stream the hot path talks to the kernel directly (`_Direct`):
  a send or receive that the kernel completes at once costs one syscall
  and no trip through trio's scheduler; only when the kernel would block
  do we wait through trio (`wait_readable`, or trio's own `send_all` for
  the unsent rest).  So `flush` is not a checkpoint when the kernel takes
  everything, and `receive` yields at least every `_FAIR_RECEIVES`
  consecutive receives that did not block, so a peer that never stops
  sending cannot starve the other tasks (or delay a cancellation) without
  bound.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Protocol

import trio

from coord.clock.lamport import LamportClock
from coord.wire.errors import ConnectionLost, Unavailable
from coord.wire.frame import HEADER, VERSION, Frame, FrameDecoder, FrameKind

_REST = HEADER.size - 5
# Bodies up to this size are copied next to their header (one buffer, one
# syscall); bigger ones are sent as their own buffer to avoid the copy.
_COALESCE_LIMIT = 64 * 1024
# Receives in a row that may complete without yielding to trio's scheduler.
_FAIR_RECEIVES = 16


class _Direct:
    """Non-blocking syscalls on a TCP stream's socket, bypassing trio's wrappers.

    Why: trio's `SocketStream.send_all` ends every successful send with a
    scheduler checkpoint (a full run-loop pass, including an `epoll_wait`),
    and its `receive_some` adds a conflict detector and error translation
    layers.  Measured with `ddfs bench rpc` (CPU ms per call, client/server,
    async handler, 64 callers): see the commit that introduced this class.

    The socket object is a `dup` of the stream's file descriptor (trio keeps
    its own socket object private); both share one open file, so O_NONBLOCK
    and the byte stream are the same.  Waiting is always done on the
    *stream's* socket (`wait_readable(stream.socket)`), so trio's own close
    (`notify_closing`) wakes a waiting reader; the dup is only used for the
    `recv`/`send` syscalls and is closed with the stream.
    """

    __slots__ = ("sock", "waitable")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.waitable = stream.socket
        self.sock = socket.socket(fileno=os.dup(stream.socket.fileno()))
        self.sock.setblocking(False)

    @classmethod
    def open(cls, stream: trio.abc.Stream) -> _Direct | None:
        """The direct path for a socket stream; None for other streams, or when
        the descriptor cannot be duplicated (e.g. EMFILE: the stream then
        simply goes through trio, rather than failing the connection)."""
        if not isinstance(stream, trio.SocketStream):
            return None
        try:
            return cls(stream)
        except OSError:
            return None

    def close(self) -> None:
        self.sock.close()


class Connector(Protocol):
    """Opens a byte stream to a peer address (TCP, memory, ...)."""

    async def connect(self, address: str) -> trio.abc.Stream: ...


def parse_tcp_address(address: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port")."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address {address!r}, expected host:port")
    return host.strip("[]"), int(port)


class TcpConnector:
    """Connects to "host:port" addresses over TCP."""

    async def connect(self, address: str) -> trio.abc.Stream:
        host, port = parse_tcp_address(address)
        return await trio.open_tcp_stream(host, port)


class FrameStream:
    __slots__ = (
        "_broken",
        "_decoder",
        "_direct",
        "_drained",
        "_eager",
        "_out",
        "_sending",
        "clock",
        "node_id",
        "stream",
    )

    def __init__(
        self, stream: trio.abc.Stream, clock: LamportClock, node_id: int, max_frame_size: int
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.node_id = node_id
        self._decoder = FrameDecoder(max_frame_size)
        self._out: list[bytes] = []  # queued, not yet written
        self._sending = False  # a task is inside flush()'s write loop
        self._broken: ConnectionLost | None = None
        self._direct = _Direct.open(stream)
        self._eager = 0  # receives in a row that completed without yielding
        self._drained = False  # the last direct receive emptied the socket

    @property
    def broken(self) -> ConnectionLost | None:
        return self._broken

    @property
    def direct_io(self) -> bool:
        """Whether sends and receives take the direct-syscall path (TCP/Unix sockets)."""
        return self._direct is not None

    def queue_frame(self, kind: FrameKind, request_id: int, budget_us: int, body: bytes) -> None:
        """Stamp and queue one frame.  Sync: callers may rely on no checkpoint here."""
        header = HEADER.pack(
            VERSION, _REST + len(body), kind, 0, request_id, self.node_id,
            self.clock.tick(), budget_us,
        )
        if len(body) <= _COALESCE_LIMIT:
            self._out.append(header + body)
        else:
            self._out.append(header)
            self._out.append(body)

    async def flush(self) -> None:
        """Write everything queued (unless another task already is)."""
        if self._sending or not self._out:
            if self._broken is not None:
                raise self._broken
            return
        if self._broken is not None:
            raise self._broken
        self._sending = True
        try:
            while self._out:
                batch, self._out = self._out, []
                if self._direct is not None and len(batch) == 1:
                    await self._send_direct(self._direct.sock, batch[0])
                elif len(batch) == 1:  # the common case, without another coroutine layer
                    await self.stream.send_all(batch[0])
                else:
                    await self._write(batch)
        except BaseException as exc:
            self._out.clear()
            self._broken = ConnectionLost(f"send failed: {exc!r}")
            if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
                raise self._broken from exc
            raise
        finally:
            self._sending = False

    def flush_nowait(self) -> bool:
        """Write one queued small frame if the kernel takes it at once; never waits.

        True when nothing is left for this caller to wait for (written, or
        another task's `flush` loop is writing and will send it).  False when
        the caller must `await flush()`: no direct path, several buffers
        queued, or the socket buffer is full (the unsent rest stays queued).
        Why: a notification then costs one syscall and neither an `await`
        nor a cancel scope (see `RpcClient.notify`).
        """
        if self._broken is not None:
            raise self._broken
        out = self._out
        if self._sending or not out:
            return True
        if self._direct is None or len(out) != 1:
            return False
        data = out[0]
        try:
            sent = self._direct.sock.send(data)
        except BlockingIOError:
            return False
        except OSError as exc:
            out.clear()
            self._broken = ConnectionLost(f"send failed: {exc!r}")
            raise self._broken from exc
        if sent == len(data):
            out.clear()
            return True
        out[0] = data[sent:]  # a copy of the rest; rare: the socket buffer was full
        return False

    async def _send_direct(self, sock: socket.socket, data: bytes) -> None:
        """One send syscall; trio's `send_all` (which waits) only for what is left."""
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"send failed: {exc!r}") from exc
        if sent < len(data):
            await self.stream.send_all(memoryview(data)[sent:])

    async def _send(self, data: bytes) -> None:
        if self._direct is not None:
            await self._send_direct(self._direct.sock, data)
        else:
            await self.stream.send_all(data)

    async def _write(self, batch: list[bytes]) -> None:
        send = self._send
        small: list[bytes] = []
        for item in batch:
            if len(item) > _COALESCE_LIMIT:
                if small:
                    await send(b"".join(small))
                    small = []
                await send(item)
            else:
                small.append(item)
        if small:
            await send(b"".join(small))

    def poll(self) -> Frame | None:
        """The next frame already buffered, without waiting (raises ProtocolError)."""
        frame = self._decoder.next_frame()
        if frame is not None:
            self.clock.observe(frame.lamport)
        return frame

    async def receive(self) -> Frame | None:
        """The next frame, or None at a clean end of stream.

        Raises `ProtocolError` subclasses on malformed input (including a
        stream that ends inside a frame) and `ConnectionLost` if the stream
        breaks.
        """
        frame = self._decoder.next_frame()
        if frame is not None:
            self.clock.observe(frame.lamport)
            return frame
        return await self.receive_more()

    async def receive_more(self) -> Frame | None:
        """Like `receive`, for callers that just saw `poll()` return None."""
        decoder = self._decoder
        while True:
            data: bytes | bytearray
            try:
                if self._direct is not None:
                    data = await self._receive_direct(self._direct, decoder.receive_hint())
                else:
                    data = await self.stream.receive_some(decoder.receive_hint())
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(f"connection broken: {exc}") from exc
            if not data:
                decoder.eof()
                return None
            decoder.feed(data if type(data) is bytes else bytes(data))
            frame = decoder.next_frame()
            if frame is not None:
                self.clock.observe(frame.lamport)
                return frame

    async def _receive_direct(self, direct: _Direct, size: int) -> bytes:
        """recv without trio's wrappers: yields only to wait, or to be fair."""
        if self._broken is not None:
            raise trio.ClosedResourceError("the stream was closed")
        if self._drained:
            # The last receive emptied the socket (it got less than it asked
            # for): with request/reply traffic the next recv would almost
            # always fail with EAGAIN, so wait first and save that syscall.
            self._eager = 0
            await trio.lowlevel.wait_readable(direct.waitable)
            if self._broken is not None:
                raise trio.ClosedResourceError("the stream was closed")
        elif self._eager >= _FAIR_RECEIVES:
            self._eager = 0
            await trio.lowlevel.checkpoint()
        else:
            # Cheap unless cancelled: a cancelled reader stops even while data flows.
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = direct.sock.recv(size)
            except BlockingIOError:
                self._eager = 0
                await trio.lowlevel.wait_readable(direct.waitable)
                if self._broken is not None:
                    raise trio.ClosedResourceError("the stream was closed") from None
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc!r}") from exc
            self._eager += 1
            self._drained = len(data) < size
            return data

    async def aclose(self) -> None:
        if self._broken is None:
            self._broken = ConnectionLost("connection closed")
        try:
            await trio.aclose_forcefully(self.stream)
        finally:
            if self._direct is not None:
                self._direct.close()


async def receive_within(fs: FrameStream, deadline: float, what: str) -> Frame:
    """One frame before `deadline` (used by handshakes); EOF or timeout -> Unavailable."""
    with trio.move_on_at(deadline):
        frame = await fs.receive()
        if frame is None:
            raise ConnectionLost(f"peer closed the connection during {what}")
        return frame
    raise Unavailable(f"{what} timed out")


def deadline_after(seconds: float | None) -> float:
    return math.inf if seconds is None else trio.current_time() + seconds
