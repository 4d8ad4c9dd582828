"""The exported-object table: handle ids, lease-based lifetimes, collection.

Sans-IO: every call takes `now` (seconds on the server's monotonic clock).

Invariants:
* A handle id is a random 63-bit number drawn from the injected rng (never
  reused while exported; unguessable enough that a stale or forged id finds
  nothing), except permanent (root) objects, whose id is derived from their
  name so that clients can address them without being given a handle.
* Each non-permanent object is held by a lease (`coord.lease.LeaseGrantor`,
  resource "rmi/<id>") granted to the client it was exported to; only that
  client, with the lease's token, can renew or release it.  Once the lease
  has lapsed (the grantor's late expiry: the holder's view always ends
  earlier) the object is unreachable and is reported by `collect` exactly
  once, so its `on_collect` hook runs once.
* The table is in memory: a restarted server has no objects, and every old
  handle gets NoSuchObject (lease tokens restart too, which is harmless since
  ids are random and the objects are gone).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NewType

from coord.lease.grantor import LeaseGrantor
from coord.lease.types import Denied, FencingToken, HolderId, LeaseConfig, ResourceId
from coord.rmi.interface import InterfaceSpec

HandleId = NewType("HandleId", int)
PERMANENT = 0  # the lease token of a permanent object (no lease)


@dataclass(frozen=True, slots=True)
class Handle:
    """What a client holds: enough to call the object and to renew its lease."""

    id: HandleId
    interface: str  # the remote interface's registered name
    token: int  # the lease's token (PERMANENT: no lease)
    lease: float  # seconds the lease was granted for (0 for permanent objects)


@dataclass(frozen=True, slots=True)
class RmiConfig:
    # Lease timing: the holder renews after renew_fraction of the term.
    lease: LeaseConfig = field(default_factory=lambda: LeaseConfig(duration=10.0))
    collect_interval: float = 0.5  # how often the server looks for lapsed leases (seconds)
    max_objects: int = 100_000  # exports beyond this are refused (TOO_MANY_OBJECTS)

    def validate(self) -> RmiConfig:
        self.lease.validate()
        if not 0 < self.collect_interval <= self.lease.duration:
            raise ValueError("collect_interval must be in (0, lease.duration]")
        if self.max_objects < 1:
            raise ValueError("max_objects must be positive")
        return self


@dataclass(slots=True)
class Exported:
    handle: Handle
    obj: object
    spec: InterfaceSpec
    owner: HolderId | None  # None: permanent
    on_collect: Callable[[], None] | None = None


class NoSuchObject(LookupError):
    """No live object has this handle (never existed, released, or collected)."""


class TableFull(RuntimeError):
    """The server holds `max_objects` objects already."""


def permanent_id(name: str) -> HandleId:
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"ddfs-rmi").digest()
    return HandleId(int.from_bytes(digest, "big") >> 1)


def _check_implements(obj: object, spec: InterfaceSpec) -> None:
    missing = [m for m in spec.methods if not callable(getattr(obj, m, None))]
    if missing:
        raise TypeError(f"{type(obj).__qualname__} does not implement {spec.name}: "
                        f"missing {', '.join(missing)}")


def _resource(hid: HandleId) -> ResourceId:
    return ResourceId(f"rmi/{hid}")


class ObjectTable:
    def __init__(self, config: RmiConfig, rng: random.Random) -> None:
        self.config = config.validate()
        self._rng = rng
        self._grantor = LeaseGrantor(config.lease)
        self._objects: dict[HandleId, Exported] = {}
        self._lapsed: list[Exported] = []  # found lapsed by lookup; reported by collect

    def __len__(self) -> int:
        return len(self._objects)

    def export(self, obj: object, spec: InterfaceSpec, owner: HolderId, now: float, *,
               on_collect: Callable[[], None] | None = None,
               duration: float | None = None) -> Handle:
        _check_implements(obj, spec)
        if len(self._objects) >= self.config.max_objects:
            raise TableFull(f"{len(self._objects)} objects exported")
        hid = HandleId(self._rng.getrandbits(63))
        while hid in self._objects or hid == 0:
            hid = HandleId(self._rng.getrandbits(63))
        granted = self._grantor.request(_resource(hid), owner, now, duration)
        if isinstance(granted, Denied):  # a fresh resource: only a bad duration gets here
            raise ValueError(f"lease refused: {granted.reason.name}")
        handle = Handle(hid, spec.name, granted.token, granted.duration)
        self._objects[hid] = Exported(handle, obj, spec, owner, on_collect)
        return handle

    def export_permanent(self, obj: object, spec: InterfaceSpec, name: str) -> Handle:
        _check_implements(obj, spec)
        hid = permanent_id(name)
        if hid in self._objects:
            raise ValueError(f"a permanent object named {name!r} is already exported")
        handle = Handle(hid, spec.name, PERMANENT, 0.0)
        self._objects[hid] = Exported(handle, obj, spec, None)
        return handle

    def lookup(self, hid: HandleId, now: float) -> Exported:
        entry = self._objects.get(hid)
        if entry is None:
            raise NoSuchObject(f"no object {hid}")
        if entry.owner is not None and self._grantor.holder_of(_resource(hid), now) is None:
            del self._objects[hid]  # lapsed between two collections
            self._lapsed.append(entry)
            raise NoSuchObject(f"object {hid} was collected (its lease lapsed)")
        return entry

    def renew(self, hid: HandleId, owner: HolderId, token: int, now: float,
              duration: float | None = None) -> float:
        """Extend the lease; the granted term in seconds, or 0.0 if refused (object gone
        or not this owner's)."""
        entry = self._objects.get(hid)
        if entry is None or entry.owner is None:
            return 0.0
        result = self._grantor.renew(_resource(hid), owner, FencingToken(token), now, duration)
        return 0.0 if isinstance(result, Denied) else result.duration

    def release(self, hid: HandleId, owner: HolderId, token: int, now: float) -> Exported | None:
        """Drop the object now if `owner` holds its lease `token`; the dropped entry."""
        entry = self._objects.get(hid)
        if entry is None or entry.owner is None:
            return None
        if not self._grantor.release(_resource(hid), owner, FencingToken(token), now).freed:
            return None
        return self._objects.pop(hid)

    def collect(self, now: float) -> list[Exported]:
        """Remove and return every object whose lease has lapsed (each reported once)."""
        out, self._lapsed = self._lapsed, []
        for expired in self._grantor.expire_due(now):
            hid = HandleId(int(expired.resource.removeprefix("rmi/")))
            entry = self._objects.get(hid)
            if entry is not None and entry.handle.token == expired.token:
                out.append(self._objects.pop(hid))
        return out
