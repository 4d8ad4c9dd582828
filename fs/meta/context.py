"""What every FS operation is given besides its arguments: the entry and the config.

`FsConfig` decides results, so every replica must use the same values (it
belongs to the cluster's configuration, like `coord.kv.types.KVConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fs.meta.state import fs_time


@dataclass(frozen=True, slots=True)
class FsConfig:
    lease_ms: int = 10_000  # a chunk primary lease lasts this long in log time
    max_links: int = 65_000  # EMLINK beyond this many hard links
    replicas: int = 3  # chunks are placed on this many servers when that many are live
    max_depth: int = 100_000  # directory depth walked by the rename loop check

    def validate(self) -> FsConfig:
        if self.lease_ms < 1 or self.max_links < 2 or self.replicas < 1 or self.max_depth < 2:
            raise ValueError(f"bad FS config {self}")
        return self


@dataclass(frozen=True, slots=True)
class Op:
    """The entry being applied: its index, its log time, the session it runs in."""

    index: int
    now_ms: int
    session: int  # the KV client id of the session, 0 for a leader command
    config: FsConfig

    @property
    def ns(self) -> int:
        """The time stamped on every change this entry makes (see `fs_time`)."""
        return fs_time(self.now_ms, self.index)
