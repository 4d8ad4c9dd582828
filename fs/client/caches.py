"""The client's soft state about chunks: locations, leases and failing servers.

All three are sans-IO (time is an argument: seconds on any monotonic clock)
and only ever make the client *try* something; the servers decide.  A wrong
entry costs a retry, never wrong data, because:

* a location names the chunk version; a replica at another version refuses
  the read (STALE_VERSION), and the client then drops the entry and asks
  the metadata service again;
* a lease names its fencing token; a replica that has seen a newer one
  refuses the write (STALE_TOKEN / NOT_PRIMARY) and the client drops the
  lease and asks again.

Invariants:
* `LocationCache` holds at most `max_entries` entries (least recently used
  go first), each younger than `ttl`; `None` records a hole (no chunk);
  `drop_inode` is called at every open (close-to-open: another client may
  have written, truncated or re-placed the file's chunks since);
* `LeaseTable` never returns a lease past `valid_until`, which the caller
  computes from the time it *sent* the request, minus a safety margin;
* `Suspects` forgets an address `ttl` after its last failure.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from fs.meta.results import LeaseResult
from fs.types import ChunkLocation, InodeId


class Unknown:
    """The cache has no answer: ask the metadata service."""


UNKNOWN = Unknown()


class LocationCache:
    """(inode, chunk index) -> location, or None for a hole."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl and max_entries must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        # (inode, index) -> (location or None, time stored); LRU order.
        self._entries: OrderedDict[tuple[InodeId, int], tuple[ChunkLocation | None, float]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, inode: InodeId, index: int, now: float) -> ChunkLocation | Unknown | None:
        key = (inode, index)
        found = self._entries.get(key)
        if found is None:
            return UNKNOWN
        location, stored = found
        if now - stored >= self.ttl:
            del self._entries[key]
            return UNKNOWN
        self._entries.move_to_end(key)
        return location

    def put(self, inode: InodeId, index: int, location: ChunkLocation | None, now: float) -> None:
        key = (inode, index)
        self._entries[key] = (location, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def put_range(
        self, inode: InodeId, first: int, count: int, found: Iterable[ChunkLocation], now: float
    ) -> None:
        """Record a metadata answer for chunks first..first+count-1: absent ones are holes."""
        by_index = {loc.index: loc for loc in found}
        for index in range(first, first + count):
            self.put(inode, index, by_index.get(index), now)

    def invalidate(self, inode: InodeId, index: int) -> None:
        self._entries.pop((inode, index), None)

    def drop_inode(self, inode: InodeId) -> None:
        for key in [k for k in self._entries if k[0] == inode]:
            del self._entries[key]


@dataclass(frozen=True, slots=True)
class HeldLease:
    lease: LeaseResult
    valid_until: float  # do not use it at or after this time


class LeaseTable:
    """The primary leases this client holds, per (inode, chunk index)."""

    def __init__(self) -> None:
        self._leases: dict[tuple[InodeId, int], HeldLease] = {}

    def get(self, inode: InodeId, index: int, now: float) -> LeaseResult | None:
        held = self._leases.get((inode, index))
        if held is None or now >= held.valid_until:
            return None
        return held.lease

    def put(self, inode: InodeId, index: int, lease: LeaseResult, valid_until: float) -> None:
        self._leases[(inode, index)] = HeldLease(lease, valid_until)

    def replace_location(self, inode: InodeId, index: int, location: ChunkLocation) -> None:
        """After a replica was dropped: same token, fewer replicas, a higher version."""
        held = self._leases.get((inode, index))
        if held is None:
            return
        lease = held.lease
        if location.handle != lease.location.handle or lease.primary not in dict(
            location.replicas
        ):
            del self._leases[(inode, index)]
            return
        fresh = LeaseResult(location, lease.primary, lease.token, lease.expires_ns, lease.lease_ms)
        self._leases[(inode, index)] = HeldLease(fresh, held.valid_until)

    def invalidate(self, inode: InodeId, index: int) -> None:
        self._leases.pop((inode, index), None)

    def drop_from(self, inode: InodeId, first_index: int) -> None:
        """Forget the leases of chunks `first_index` and later (after a truncate)."""
        for key in [k for k in self._leases if k[0] == inode and k[1] >= first_index]:
            del self._leases[key]

    def drop_inode(self, inode: InodeId) -> None:
        self.drop_from(inode, 0)


class Suspects:
    """Chunk-server addresses that failed recently: tried last for a while."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._failed: dict[str, float] = {}  # address -> time of the last failure

    def mark(self, address: str, now: float) -> None:
        self._failed[address] = now
        if len(self._failed) > 1024:  # bound the table: keep only live suspicions
            self._failed = {a: t for a, t in self._failed.items() if now - t < self.ttl}

    def clear(self, address: str) -> None:
        self._failed.pop(address, None)

    def current(self, now: float) -> frozenset[str]:
        return frozenset(a for a, t in self._failed.items() if now - t < self.ttl)
