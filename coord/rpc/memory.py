"""In-memory twins for tests: a network of named listeners over trio memory
streams, and a stream wrapper that drops or duplicates whole frames.

Invariants:
- `MemoryNetwork.connect` behaves like TCP connect: it fails with
  ConnectionRefusedError when nobody listens at the address, and otherwise
  hands the other end of a fresh stream pair to that address's listener.
- `FaultyStream` only ever drops or repeats *whole* frames it sends (it
  re-frames outgoing bytes with a `FrameDecoder`), so the byte stream stays
  well-formed and the faults model lost and duplicated messages, not
  corruption.  Which frames are affected is decided by an injected policy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import trio

from coord.wire.frame import HEADER_SIZE, Frame, FrameDecoder, encode_frame


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self.address = address
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](64)

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None

    def offer(self, stream: trio.abc.Stream) -> None:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionRefusedError(f"{self.address} does not accept") from None

    async def aclose(self) -> None:
        self._network.forget(self)
        await self._receive.aclose()
        await self._send.aclose()


class MemoryNetwork:
    """Addresses are arbitrary strings.  Implements the `Connector` protocol.

    `wrap_client` / `wrap_server`, if set, wrap every client-side / server-side
    stream (fault injection: wrap the end whose *sends* should suffer).
    """

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryListener] = {}
        self.wrap_client: Callable[[str, trio.abc.Stream], trio.abc.Stream] | None = None
        self.wrap_server: Callable[[str, trio.abc.Stream], trio.abc.Stream] | None = None
        self.connects = 0  # successful connects, for tests

    def listen(self, address: str) -> MemoryListener:
        if address in self._listeners:
            raise OSError(f"address {address} already in use")
        listener = self._listeners[address] = MemoryListener(self, address)
        return listener

    def forget(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]

    async def connect(self, address: str) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        listener = self._listeners.get(address)
        if listener is None:
            raise ConnectionRefusedError(f"nobody listens at {address}")
        client_end: trio.abc.Stream
        server_end: trio.abc.Stream
        # Imported here: trio.testing pulls in pytest, which production code
        # importing coord.rpc must not pay for.
        from trio.testing import memory_stream_pair  # noqa: PLC0415

        client_end, server_end = memory_stream_pair()
        if self.wrap_server is not None:
            server_end = self.wrap_server(address, server_end)
        listener.offer(server_end)
        self.connects += 1
        if self.wrap_client is not None:
            return self.wrap_client(address, client_end)
        return client_end


class Fault(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    DUPLICATE = "duplicate"


FaultPolicy = Callable[[Frame], Fault]


class FaultyStream(trio.abc.Stream):
    """Wraps a stream; frames it *sends* pass, vanish or go twice per `policy`.

    Wrap the server's end to fault replies, the client's end to fault requests.
    """

    def __init__(self, inner: trio.abc.Stream, policy: FaultPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self._decoder = FrameDecoder(1 << 40)
        self.dropped = 0
        self.duplicated = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.feed(bytes(data))
        out: list[bytes] = []
        while (frame := self._decoder.next_frame()) is not None:
            raw = encode_frame(
                frame.kind, frame.request_id, sender=frame.sender, lamport=frame.lamport,
                budget_us=frame.budget_us, body=bytes(frame.body),
            )
            assert len(raw) == HEADER_SIZE + len(frame.body)
            fault = self.policy(frame)
            if fault is Fault.DROP:
                self.dropped += 1
            elif fault is Fault.DUPLICATE:
                self.duplicated += 1
                out += [raw, raw]
            else:
                out.append(raw)
        if out:
            await self.inner.send_all(b"".join(out))
        else:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()
