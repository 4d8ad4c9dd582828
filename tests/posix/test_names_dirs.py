"""Names and directories: lengths, existing names, removing the wrong kind,
link counts of directories, listing, parent times."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.posix.support import err


def test_name_of_255_bytes_is_allowed(d: Path) -> None:
    name = "n" * 255
    (d / name).write_bytes(b"x")
    assert os.listdir(d) == [name]


def test_name_of_256_bytes_is_enametoolong(d: Path) -> None:
    assert err(os.open, d / ("n" * 256), os.O_CREAT | os.O_WRONLY, 0o644) == "ENAMETOOLONG"
    assert err(os.mkdir, d / ("n" * 256)) == "ENAMETOOLONG"


def test_symlink_target_of_4095_bytes_is_kept(d: Path) -> None:
    target = "t" * 4095
    os.symlink(target, d / "long")
    assert os.readlink(d / "long") == target


def test_create_exclusive_of_an_existing_name_is_eexist(d: Path) -> None:
    (d / "f").write_bytes(b"")
    assert err(os.open, d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644) == "EEXIST"


def test_mkdir_of_an_existing_name_is_eexist(d: Path) -> None:
    (d / "f").write_bytes(b"")
    os.mkdir(d / "sub")
    assert err(os.mkdir, d / "f") == "EEXIST"
    assert err(os.mkdir, d / "sub") == "EEXIST"


def test_rmdir_of_a_nonempty_dir_is_enotempty(d: Path) -> None:
    os.mkdir(d / "sub")
    (d / "sub" / "f").write_bytes(b"")
    assert err(os.rmdir, d / "sub") == "ENOTEMPTY"
    assert (d / "sub" / "f").exists()


def test_rmdir_of_a_file_is_enotdir(d: Path) -> None:
    (d / "f").write_bytes(b"")
    assert err(os.rmdir, d / "f") == "ENOTDIR"


def test_unlink_of_a_directory_is_eisdir(d: Path) -> None:
    os.mkdir(d / "sub")
    assert err(os.unlink, d / "sub") == "EISDIR"


def test_a_new_directory_has_two_links_and_adds_one_to_its_parent(d: Path) -> None:
    before = d.stat().st_nlink
    os.mkdir(d / "sub")
    assert (d / "sub").stat().st_nlink == 2
    assert d.stat().st_nlink == before + 1
    os.rmdir(d / "sub")
    assert d.stat().st_nlink == before


def test_readdir_lists_every_name_exactly_once(d: Path) -> None:
    names = {f"file-{i:04d}" for i in range(300)}
    for name in names:
        os.close(os.open(d / name, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == len(names) and set(listed) == names


def test_creating_an_entry_updates_the_parents_mtime_and_ctime(d: Path) -> None:
    before = d.stat()
    time.sleep(0.05)  # past the coarse clock tick of local file systems
    (d / "f").write_bytes(b"")
    after = d.stat()
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns


def test_reading_a_directory_as_a_file_is_eisdir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        assert err(os.read, fd, 10) == "EISDIR"
    finally:
        os.close(fd)
    assert err(os.open, d, os.O_WRONLY) == "EISDIR"
