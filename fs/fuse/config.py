"""Configuration of a FUSE mount (built by tools/, validated here).

Invariants checked by `validate()`: timeouts are finite and not negative, the
operation timeout is positive (every request is answered within it), and no
mount option that breaks the mount is passed through (`max_read` makes
libfuse's session setup fail; `allow_other`/`default_permissions` and the
names are ours to set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Options the mount always sets itself (see MountConfig.fuse_options).
_RESERVED = ("fsname", "subtype", "allow_other", "default_permissions")
# Options libfuse 3.14's session setup refuses ("unknown option" / "different
# maximum read size"); max_write is 1 MiB already (FUSE_MAX_MAX_PAGES pages).
_FORBIDDEN = ("max_read", "max_write")


@dataclass(frozen=True, slots=True)
class FuseConfig:
    """How the operations layer answers the kernel."""

    entry_timeout: float = 1.0  # seconds the kernel may cache a name -> inode
    attr_timeout: float = 1.0  # seconds the kernel may cache attributes
    negative_timeout: float = 1.0  # seconds a "no such name" may be cached (0: never)
    op_timeout: float = 30.0  # every FsApi call is bounded by this: ETIMEDOUT after
    keep_cache: bool = False  # keep the page cache across opens (False: close-to-open)
    revalidate_on_open: bool = True  # drop cached attributes on open (fresh size)
    io_block: int = 1 << 20  # st_blksize: the I/O size programs like cp use
    readdir_batch: int = 256  # entries fetched per FsApi.readdir call
    max_tasks: int = 64  # concurrent requests pyfuse3 may run

    def validate(self) -> None:
        for name in ("entry_timeout", "attr_timeout", "negative_timeout", "op_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        if self.op_timeout <= 0:
            raise ValueError("op_timeout must be > 0 (requests must never hang)")
        if self.io_block < 4096 or self.io_block & (self.io_block - 1):
            raise ValueError("io_block must be a power of two >= 4096")
        if self.readdir_batch < 1 or self.max_tasks < 1:
            raise ValueError("readdir_batch and max_tasks must be >= 1")


@dataclass(frozen=True, slots=True)
class MountConfig:
    """Where and how to mount."""

    mountpoint: str
    fuse: FuseConfig = field(default_factory=FuseConfig)
    options: tuple[str, ...] = ()  # extra -o options, e.g. ("noexec", "ro")
    read_ahead_kb: int | None = 1024  # kernel read-ahead for the mount (None: kernel default)
    allow_other: bool = True  # let every user use the mount (permissions still apply)

    def validate(self) -> None:
        self.fuse.validate()
        if not self.mountpoint:
            raise ValueError("no mountpoint")
        if self.read_ahead_kb is not None and not 0 <= self.read_ahead_kb <= 1 << 20:
            raise ValueError("read_ahead_kb must be in 0..1048576")
        for option in self.options:
            key = option.split("=", 1)[0]
            if key in _FORBIDDEN:
                raise ValueError(f"mount option {key} is not supported (libfuse 3 refuses it)")
            if key in _RESERVED:
                raise ValueError(f"mount option {key} is set by ddfs itself")

    def fuse_options(self) -> set[str]:
        """The option set for pyfuse3.init."""
        options = {"fsname=ddfs", "subtype=ddfs", "default_permissions", "noatime"}
        if self.allow_other:
            options.add("allow_other")
        options.update(self.options)
        return options
