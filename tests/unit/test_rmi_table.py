"""RMI without a network: interfaces, the object table's leases and collection,
and argument marshalling."""

from __future__ import annotations

import random
from typing import Protocol

import msgpack
import pytest

from coord.lease.types import HolderId, LeaseConfig
from coord.rmi import codec
from coord.rmi.interface import remote_interface, spec_of
from coord.rmi.table import (
    PERMANENT,
    Handle,
    HandleId,
    NoSuchObject,
    ObjectTable,
    RmiConfig,
    TableFull,
    permanent_id,
)

A, B = HolderId("node-1"), HolderId("node-2")
CONFIG = RmiConfig(lease=LeaseConfig(duration=2.0, max_duration=10.0, epsilon=0.05),
                   collect_interval=0.5, max_objects=3)


@remote_interface("test.table.Counter")
class Counter(Protocol):
    async def add(self, n: int, note: str = "") -> int: ...
    async def value(self) -> int: ...


class Impl:
    async def add(self, n: int, note: str = "") -> int:
        return n

    async def value(self) -> int:
        return 0

    def private(self) -> None: ...


def table() -> ObjectTable:
    return ObjectTable(CONFIG, random.Random(5))


def test_interface_lists_only_its_async_public_methods() -> None:
    spec = spec_of(Counter)
    assert spec.name == "test.table.Counter" and sorted(spec.methods) == ["add", "value"]
    assert list(spec.methods["add"].signature.parameters) == ["n", "note"]
    assert spec_of("test.table.Counter") is spec


def test_bad_interfaces_are_refused() -> None:
    @remote_interface("test.table.Sync")
    class Sync(Protocol):
        def get(self) -> int: ...

    with pytest.raises(TypeError, match="async def"):
        spec_of(Sync)

    @remote_interface("test.table.KwOnly")
    class KwOnly(Protocol):
        async def get(self, *, key: str) -> int: ...

    with pytest.raises(TypeError, match="keyword-only"):
        spec_of(KwOnly)
    with pytest.raises(ValueError, match="already registered"):

        @remote_interface("test.table.Counter")
        class Impostor(Protocol):
            async def add(self, n: int) -> int: ...
    with pytest.raises(TypeError):
        spec_of(Impl)  # not an interface


def test_export_gives_a_leased_handle_that_lapses_without_renewal() -> None:
    t = table()
    handle = t.export(Impl(), spec_of(Counter), A, now=0.0)
    assert handle.interface == "test.table.Counter" and handle.lease == 2.0
    assert handle.token != PERMANENT and handle.id != 0
    assert isinstance(t.lookup(handle.id, 1.0).obj, Impl)
    assert t.collect(2.0) == []  # within the term plus the grantor's epsilon
    gone = t.collect(2.06)
    assert [e.handle for e in gone] == [handle]
    with pytest.raises(NoSuchObject):
        t.lookup(handle.id, 2.1)
    assert t.collect(100.0) == [] and len(t) == 0  # reported exactly once


def test_a_lookup_after_the_lease_lapsed_fails_and_is_reported_once() -> None:
    t = table()
    handle = t.export(Impl(), spec_of(Counter), A, now=0.0)
    with pytest.raises(NoSuchObject, match="collected"):
        t.lookup(handle.id, 5.0)
    assert [e.handle for e in t.collect(5.0)] == [handle]
    assert t.collect(6.0) == []


def test_only_the_owner_with_the_token_renews_or_releases() -> None:
    t = table()
    handle = t.export(Impl(), spec_of(Counter), A, now=0.0)
    assert t.renew(handle.id, B, handle.token, 1.0) == 0.0
    assert t.renew(handle.id, A, handle.token + 1, 1.0) == 0.0
    assert t.renew(handle.id, A, handle.token, 1.5) == 2.0
    assert t.collect(3.0) == []  # renewed at 1.5: lives until 3.55
    assert t.release(handle.id, B, handle.token, 3.0) is None
    released = t.release(handle.id, A, handle.token, 3.0)
    assert released is not None and released.handle == handle
    with pytest.raises(NoSuchObject):
        t.lookup(handle.id, 3.0)
    assert t.renew(handle.id, A, handle.token, 3.1) == 0.0


def test_permanent_objects_never_lapse_and_have_stable_ids() -> None:
    t = table()
    root = t.export_permanent(Impl(), spec_of(Counter), "counter")
    assert root.id == permanent_id("counter") and root.token == PERMANENT
    assert t.collect(1e9) == [] and t.lookup(root.id, 1e9).handle == root
    with pytest.raises(ValueError):
        t.export_permanent(Impl(), spec_of(Counter), "counter")
    assert t.renew(root.id, A, PERMANENT, 1.0) == 0.0  # nothing to renew


def test_exports_are_checked_and_bounded() -> None:
    t = table()

    class Half:
        async def add(self, n: int, note: str = "") -> int:
            return n

    with pytest.raises(TypeError, match="missing value"):
        t.export(Half(), spec_of(Counter), A, 0.0)
    for _ in range(3):
        t.export(Impl(), spec_of(Counter), A, 0.0)
    with pytest.raises(TableFull):
        t.export(Impl(), spec_of(Counter), A, 0.0)
    assert len(t) == 3


def test_values_and_handles_round_trip() -> None:
    h = Handle(HandleId(12345), "test.table.Counter", 7, 2.5)
    value = [None, True, 3, 1.5, "s", b"\x00b", {"k": [h]}, h]
    assert codec.unpack(codec.pack(value)) == value
    assert codec.unpack(codec.pack((1, 2))) == [1, 2]  # tuples come back as lists


@pytest.mark.parametrize("bad", [object(), {1, 2}, Impl()])
def test_unsupported_values_are_refused_before_sending(bad: object) -> None:
    with pytest.raises(codec.MarshalError):
        codec.pack([bad])


@pytest.mark.parametrize("raw", [
    b"\xc1", msgpack.packb(msgpack.ExtType(7, b"x")),
    msgpack.packb(msgpack.ExtType(codec.HANDLE_EXT, msgpack.packb(["id", 1, 2, 3]))),
])
def test_garbage_is_a_marshal_error(raw: bytes) -> None:
    with pytest.raises(codec.MarshalError):
        codec.unpack(raw)
