"""pytest fixtures that mount lossyfs for one test.

Import them into a conftest.py (`from tests.lossyfs.fixtures import
lossy_mount, lossy_mount_factory`).  Invariant: when a test ends, however it
ends, every mount it made is detached and every file-system process reaped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lossyfs.control import LossyMount

MakeLossyMount = Callable[[str], LossyMount]


def _require_fuse() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("lossyfs needs /dev/fuse and fusermount3")


@pytest.fixture
def lossy_mount_factory(tmp_path: Path) -> Iterator[MakeLossyMount]:
    """`make(name)` mounts a fresh lossyfs at tmp_path/<name>/mnt over tmp_path/<name>/backing."""
    _require_fuse()
    made: list[LossyMount] = []

    def make(name: str) -> LossyMount:
        root = tmp_path / name
        mount = LossyMount(root / "backing", root / "mnt", root / "lossyfs.log")
        made.append(mount)
        mount.start()
        return mount

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for mount in reversed(made):
            try:
                mount.close()
            except BaseException as exc:  # close the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def lossy_mount(lossy_mount_factory: MakeLossyMount) -> LossyMount:
    """One started lossyfs mount; `.mountpoint`, `.backing`, `.crash()`."""
    return lossy_mount_factory("lossy")
