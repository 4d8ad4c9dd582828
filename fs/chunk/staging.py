"""The staging buffer: pushed data waiting for the write that will use it.  Sans-IO.

Invariants:

* Entries are keyed by `DataKey(origin, data_id)`; an entry is a set of
  parts (byte offset -> bytes).  Pushing the same part again replaces it
  (pushes are retried), so the buffer's content never depends on how often
  a part arrived.
* `bytes_used` is the sum of the lengths of all parts held, and never
  exceeds `max_bytes`: a part that would pass the limit is refused
  (`put` returns False) after dropping expired entries, so memory stays
  bounded whatever clients do.
* An entry not touched for `ttl` seconds is dropped by the next call that
  passes a `now` past its expiry (the caller's clock, injected).
* `take` removes the entry whatever the outcome: a write consumes its data
  even when it fails, and a consumed key is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fs.types import CHUNK_SIZE


@dataclass(frozen=True, slots=True, order=True)
class DataKey:
    origin: int  # the RPC node id of the client whose data it is
    data_id: int  # chosen by that client


class IncompleteData(Exception):
    """The parts of an entry do not tile [0, total) (a gap or an overlap)."""


@dataclass(slots=True)
class _Entry:
    parts: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes
    size: int = 0  # sum of len(parts)
    expires: float = 0.0  # seconds on the caller's clock


class StagingBuffer:
    def __init__(self, max_bytes: int, ttl: float) -> None:
        if max_bytes <= 0 or ttl <= 0:
            raise ValueError("staging max_bytes and ttl must be positive")
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: dict[DataKey, _Entry] = {}
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: DataKey) -> bool:
        return key in self._entries

    def put(self, key: DataKey, offset: int, data: bytes, now: float) -> bool:
        """Stage `data` at `offset` of the entry `key`; False if it does not fit."""
        if offset < 0 or offset + len(data) > CHUNK_SIZE:
            raise ValueError(f"part [{offset}, {offset + len(data)}) is outside a chunk")
        entry = self._entries.get(key)
        replaced = len(entry.parts.get(offset, b"")) if entry is not None else 0
        growth = len(data) - replaced
        if self.bytes_used + growth > self.max_bytes:
            self.expire(now)
            if self.bytes_used + growth > self.max_bytes:
                return False
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.parts[offset] = data
        entry.size += growth
        entry.expires = now + self.ttl
        self.bytes_used += growth
        return True

    def take(self, key: DataKey, now: float) -> bytes | None:
        """Remove the entry and return its data (None if absent or expired).

        Raises IncompleteData (the entry is dropped too) if its parts leave a
        gap or overlap.
        """
        self.expire(now)
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.bytes_used -= entry.size
        if len(entry.parts) == 1 and 0 in entry.parts:
            return entry.parts[0]
        end = 0
        for offset in sorted(entry.parts):
            if offset != end:
                raise IncompleteData(f"staged data {key} has a gap or overlap at byte {end}")
            end += len(entry.parts[offset])
        return b"".join(entry.parts[o] for o in sorted(entry.parts))

    def drop(self, key: DataKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_used -= entry.size

    def expire(self, now: float) -> int:
        """Drop every entry whose expiry has passed; returns how many."""
        dead = [k for k, e in self._entries.items() if e.expires <= now]
        for key in dead:
            self.drop(key)
        return len(dead)
