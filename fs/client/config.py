"""Configuration of the networked file-system client (built by tools/, checked here).

Invariants checked by `validate()` (the constructor calls it): every time is
finite and positive; one metadata attempt fits in the operation timeout; a
push part fits in an RPC frame and in the write buffer; the lease margin is
below the lease terms the metadata service grants (10 s by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coord.wire.frame import DEFAULT_MAX_FRAME
from fs.types import CHUNK_SIZE

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class FsClientConfig:
    meta_endpoints: tuple[str, ...]  # "host:port" of the metadata members
    op_timeout: float = 30.0  # every FsApi call answers within this (else ETIMEDOUT)
    meta_attempt_timeout: float = 2.0  # one try at one metadata member
    chunk_call_timeout: float = 10.0  # one call to one chunk server (then the next replica)
    write_buffer: int = 16 * MiB  # buffered bytes per file before a background flush starts
    max_extents: int = 1024  # buffered extents per file before a flush (bounds RPCs per flush)
    flushes_in_flight: int = 2  # background flushes per file at once (pipelining)
    push_part: int = 1 * MiB  # bytes per chunk.push message
    push_window: int = 4  # parts of one write in flight along the chain
    read_part: int = 4 * MiB  # bytes per chunk.read
    read_window: int = 4  # chunk.read calls of one FsApi.read in flight
    location_ttl: float = 30.0  # seconds a cached chunk location is trusted
    location_entries: int = 65_536  # cached chunk locations (LRU beyond)
    lease_margin: float = 2.0  # stop using a lease this long before its term ends
    suspect_ttl: float = 10.0  # a failing chunk server is tried last for this long
    sync_writes: bool = True  # chunk.write(sync=True): data is on disk when flush returns
    local_hosts: tuple[str, ...] = ()  # this machine's addresses: replicas there are read first
    keepalive_interval: float = 0.0  # 0: a quarter of the session TTL

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> FsClientConfig:
        if not self.meta_endpoints:
            raise ValueError("at least one metadata endpoint is needed")
        times = ("op_timeout", "meta_attempt_timeout", "chunk_call_timeout", "location_ttl",
                 "lease_margin", "suspect_ttl")
        for name in times:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, not {value}")
        if not math.isfinite(self.keepalive_interval) or self.keepalive_interval < 0:
            raise ValueError("keepalive_interval must be >= 0")
        if self.meta_attempt_timeout > self.op_timeout:
            raise ValueError("meta_attempt_timeout must not exceed op_timeout")
        if not 0 < self.push_part <= DEFAULT_MAX_FRAME - MiB:
            raise ValueError("push_part must fit in one RPC frame")
        if not 0 < self.read_part <= min(CHUNK_SIZE, DEFAULT_MAX_FRAME - MiB):
            raise ValueError("read_part must fit in a chunk and in one RPC frame")
        if not self.push_part <= self.write_buffer <= CHUNK_SIZE:
            raise ValueError("need push_part <= write_buffer <= CHUNK_SIZE")
        limits = (self.max_extents, self.flushes_in_flight, self.push_window, self.read_window,
                  self.location_entries)
        if min(limits) < 1:
            raise ValueError("counts must be >= 1")
        if self.lease_margin >= 10.0:
            raise ValueError("lease_margin must be below the 10 s lease term")
        return self
