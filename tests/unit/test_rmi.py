"""RMI over the RPC layer's memory streams: typed proxies, objects returned by
reference, only declared methods reachable, lease-based lifetimes (renewed
while the client lives, collected when it vanishes), release, and
at-most-once method calls under lost replies."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import pytest
import trio

from coord.lease.types import LeaseConfig
from coord.rmi import (
    Handle,
    NoSuchObject,
    Proxy,
    RmiClient,
    RmiConfig,
    RmiServer,
    codec,
    handle_of,
    remote_interface,
)
from coord.rmi.messages import Invoke, LeaseItem, Release, Renew
from coord.rpc import (
    CallContext,
    ClientConfig,
    Fault,
    FaultyStream,
    MemoryNetwork,
    RemoteError,
    Request,
    Router,
    RpcClient,
    RpcServer,
    ServerConfig,
    request,
)
from coord.wire.frame import Frame, FrameKind

SECRET = b"rmi-test-secret"
ADDR = "files-1"
CONFIG = RmiConfig(lease=LeaseConfig(duration=2.0, max_duration=10.0, epsilon=0.05),
                   collect_interval=0.25)


@remote_interface("test.rmi.OpenFile")
class OpenFile(Protocol):
    async def read(self, offset: int, size: int) -> bytes: ...
    async def write(self, offset: int, data: bytes) -> int: ...


@remote_interface("test.rmi.Directory")
class Directory(Protocol):
    async def open(self, name: str, create: bool = False) -> OpenFile: ...
    async def names(self) -> list[str]: ...


class MemFile:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0  # executions of write (at-most-once check)
        self.closed = False

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    async def write(self, offset: int, data: bytes) -> int:
        self.writes += 1
        self.data[offset:offset + len(data)] = data
        return len(data)

    def close(self) -> None:  # public, but not in the interface: never callable remotely
        self.closed = True


class MemDir:
    def __init__(self) -> None:
        self.files: dict[str, MemFile] = {}

    async def open(self, name: str, create: bool = False) -> MemFile:
        if name not in self.files:
            if not create:
                raise RemoteError("ENOENT", f"no file {name!r}")
            self.files[name] = MemFile()
        return self.files[name]

    async def names(self) -> list[str]:
        return sorted(self.files)


@request("test.rmi.lease_file")
@dataclass(frozen=True, slots=True)
class LeaseFile(Request[Handle]):
    """A plain RPC whose handler exports an object explicitly (with a cleanup hook)."""

    name: str


@dataclass
class Env:
    net: MemoryNetwork
    rmi: RmiServer
    root: MemDir
    cleaned: list[str]

    def rpc(self, node_id: int = 7, attempt_timeout: float = 5.0) -> RpcClient:
        config = ClientConfig(node_id=node_id, secret=SECRET, attempt_timeout=attempt_timeout)
        return RpcClient(config, self.net)


@asynccontextmanager
async def served() -> AsyncIterator[Env]:
    net = MemoryNetwork()
    rmi = RmiServer(CONFIG, rng=random.Random(3))
    env = Env(net, rmi, MemDir(), [])
    rmi.export_root(env.root, Directory, "files")

    def lease_file(req: LeaseFile, ctx: CallContext) -> Handle:
        return rmi.export(MemFile(), OpenFile, ctx,
                          on_collect=lambda: env.cleaned.append(req.name))

    router = rmi.routes(Router()).add(LeaseFile, lease_file)
    server = RpcServer(ServerConfig(node_id=1, secret=SECRET, role="files"), router)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [net.listen(ADDR)])
        await nursery.start(rmi.run)
        try:
            yield env
        finally:
            with trio.move_on_after(5):
                await server.shutdown()
            nursery.cancel_scope.cancel()


async def test_method_calls_travel_as_rpcs_and_objects_return_by_reference() -> None:
    async with served() as env, env.rpc() as rpc, RmiClient(rpc) as rmi:
        files = rmi.root(Directory, ADDR, "files")
        f = await files.open("a", create=True)
        assert isinstance(f, Proxy) and handle_of(f).interface == "test.rmi.OpenFile"
        assert await f.write(0, b"hello") == 5
        assert await f.read(1, 3) == b"ell"
        assert await files.names() == ["a"]
        assert bytes(env.root.files["a"].data) == b"hello"  # the server's object changed
        again = await files.open("a")  # the same object, exported again under a new handle
        assert handle_of(again).id != handle_of(f).id and await again.read(0, 5) == b"hello"
        assert len(env.rmi.table) == 3  # the root and two leased handles
        with pytest.raises(RemoteError) as exc:
            await files.open("missing")
        assert exc.value.code == "ENOENT"


async def test_only_declared_methods_can_be_called() -> None:
    async with served() as env, env.rpc() as rpc, RmiClient(rpc) as rmi:
        f = await rmi.root(Directory, ADDR, "files").open("a", create=True)
        assert not hasattr(f, "close")  # the proxy has no such method
        for name in ("close", "__init__", "_rmi_client", "data"):
            with pytest.raises(RemoteError) as exc:
                await rpc.call(ADDR, Invoke(handle_of(f).id, name, codec.pack([])))
            assert exc.value.code == "NO_SUCH_METHOD"
        assert not env.root.files["a"].closed


async def test_bad_arguments_fail_locally_or_with_bad_args() -> None:
    async with served() as env, env.rpc() as rpc, RmiClient(rpc) as rmi:
        f = await rmi.root(Directory, ADDR, "files").open("a", create=True)
        with pytest.raises(TypeError):
            await f.read(1)  # type: ignore[call-arg]  # bound locally: never sent
        hid = handle_of(f).id
        for raw in (codec.pack([1]), codec.pack({"offset": 1}), b"\xc1"):
            with pytest.raises(RemoteError) as exc:
                await rpc.call(ADDR, Invoke(hid, "read", raw))
            assert exc.value.code == "BAD_ARGS"
        assert await f.read(0, 1) == b""


async def test_a_live_client_keeps_its_objects_by_renewing_their_leases(
        autojump_clock: trio.abc.Clock) -> None:
    async with served() as env, env.rpc() as rpc, RmiClient(rpc) as rmi:
        f = await rmi.root(Directory, ADDR, "files").open("a", create=True)
        await trio.sleep(60.0)  # thirty lease terms
        assert await f.write(0, b"still here") == 10
        assert rmi.renewals >= 30 and rmi.lost == 0 and env.rmi.collected == 0


async def test_objects_of_a_vanished_client_are_collected(
        autojump_clock: trio.abc.Clock) -> None:
    async with served() as env, env.rpc() as rpc:
        async with RmiClient(rpc) as rmi:
            f = await rmi.root(Directory, ADDR, "files").open("a", create=True)
            leased = rmi.proxy(OpenFile, await rpc.call(ADDR, LeaseFile("tmp")), ADDR)
            await leased.write(0, b"x")
        # The client stopped renewing (as if its process had died).
        await trio.sleep(2.0 + 0.05 + CONFIG.collect_interval + 0.01)
        assert env.cleaned == ["tmp"] and env.rmi.collected == 2
        assert len(env.rmi.table) == 1  # only the permanent root is left
        for proxy in (f, leased):
            with pytest.raises(NoSuchObject) as exc:
                await proxy.read(0, 1)
            assert exc.value.code == "NO_SUCH_OBJECT"


async def test_release_frees_an_object_at_once() -> None:
    async with served() as env, env.rpc() as rpc, RmiClient(rpc) as rmi:
        f = rmi.proxy(OpenFile, await rpc.call(ADDR, LeaseFile("tmp")), ADDR)
        assert rmi.tracked() == 1
        await rmi.release(f)
        assert env.cleaned == ["tmp"] and rmi.tracked() == 0
        with pytest.raises(NoSuchObject):
            await f.read(0, 1)


async def test_only_the_owner_can_renew_or_release() -> None:
    async with served() as env, env.rpc(7) as owner, env.rpc(8) as other:
        handle = await owner.call(ADDR, LeaseFile("mine"))
        item = [LeaseItem(handle.id, handle.token)]
        assert (await other.call(ADDR, Renew(item))).results[0].granted == 0.0
        assert (await other.call(ADDR, Release(item))).released == 0
        assert (await owner.call(ADDR, Renew(item))).results[0].granted == 2.0
        assert (await owner.call(ADDR, Release(item))).released == 1
        assert env.cleaned == ["mine"]


async def test_a_method_runs_once_when_its_reply_is_lost(autojump_clock: trio.abc.Clock) -> None:
    drop_next = [False]

    def policy(frame: Frame) -> Fault:
        if drop_next[0] and frame.kind is FrameKind.RESPONSE:
            drop_next[0] = False
            return Fault.DROP
        return Fault.PASS

    async with served() as env:
        env.net.wrap_server = lambda _addr, stream: FaultyStream(stream, policy)
        async with env.rpc(attempt_timeout=0.5) as rpc, RmiClient(rpc) as rmi:
            f = await rmi.root(Directory, ADDR, "files").open("a", create=True)
            drop_next[0] = True
            assert await f.write(0, b"once") == 4  # the retransmission got the cached reply
            assert env.root.files["a"].writes == 1 and not drop_next[0]
