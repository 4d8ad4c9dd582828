"""rename(2) and renameat2(2) rules, hard links, symbolic links, and files
unlinked while open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.posix.support import RENAME_EXCHANGE, RENAME_NOREPLACE, err, rename2


def test_rename_over_a_nonempty_dir_is_enotempty(d: Path) -> None:
    os.mkdir(d / "a")
    os.mkdir(d / "b")
    (d / "b" / "f").write_bytes(b"")
    assert err(os.rename, d / "a", d / "b") == "ENOTEMPTY"
    assert (d / "a").is_dir() and (d / "b" / "f").exists()


def test_rename_over_an_empty_dir_replaces_it(d: Path) -> None:
    os.mkdir(d / "a")
    (d / "a" / "kept").write_bytes(b"")
    os.mkdir(d / "b")
    os.rename(d / "a", d / "b")
    assert os.listdir(d) == ["b"] and os.listdir(d / "b") == ["kept"]


def test_rename_of_a_dir_over_a_file_is_enotdir(d: Path) -> None:
    os.mkdir(d / "a")
    (d / "f").write_bytes(b"")
    assert err(os.rename, d / "a", d / "f") == "ENOTDIR"


def test_rename_of_a_file_over_a_dir_is_eisdir(d: Path) -> None:
    (d / "f").write_bytes(b"")
    os.mkdir(d / "a")
    assert err(os.rename, d / "f", d / "a") == "EISDIR"


def test_rename_of_a_dir_into_its_own_subdir_is_einval(d: Path) -> None:
    os.makedirs(d / "a" / "b")
    assert err(os.rename, d / "a", d / "a" / "b" / "c") == "EINVAL"


def test_rename_over_a_file_replaces_it(d: Path) -> None:
    (d / "a").write_bytes(b"new")
    (d / "b").write_bytes(b"old")
    ino = (d / "a").stat().st_ino
    os.rename(d / "a", d / "b")
    assert os.listdir(d) == ["b"]
    assert (d / "b").read_bytes() == b"new" and (d / "b").stat().st_ino == ino


def test_rename_of_a_hard_link_onto_its_twin_does_nothing(d: Path) -> None:
    (d / "a").write_bytes(b"x")
    os.link(d / "a", d / "b")
    os.rename(d / "a", d / "b")
    assert sorted(os.listdir(d)) == ["a", "b"] and (d / "a").stat().st_nlink == 2


def test_rename_noreplace_onto_an_existing_name_is_eexist(d: Path) -> None:
    (d / "a").write_bytes(b"a")
    (d / "b").write_bytes(b"b")
    assert err(rename2, d / "a", d / "b", RENAME_NOREPLACE) == "EEXIST"
    rename2(d / "a", d / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(d)) == ["b", "c"]


def test_rename_exchange_swaps_two_names(d: Path) -> None:
    (d / "f").write_bytes(b"file")
    os.mkdir(d / "dir")
    rename2(d / "f", d / "dir", RENAME_EXCHANGE)
    assert (d / "dir").read_bytes() == b"file" and (d / "f").is_dir()


def test_a_hard_link_shares_the_inode_and_counts_links(d: Path) -> None:
    (d / "a").write_bytes(b"shared")
    os.mkdir(d / "sub")
    os.link(d / "a", d / "sub" / "b")
    a, b = (d / "a").stat(), (d / "sub" / "b").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    (d / "sub" / "b").write_bytes(b"changed")
    assert (d / "a").read_bytes() == b"changed"
    os.unlink(d / "a")
    assert (d / "sub" / "b").stat().st_nlink == 1


def test_a_hard_link_to_a_directory_is_eperm(d: Path) -> None:
    os.mkdir(d / "sub")
    assert err(os.link, d / "sub", d / "link") == "EPERM"


def test_a_symlink_is_read_back_verbatim_and_followed(d: Path) -> None:
    (d / "target").write_bytes(b"through the link")
    os.symlink("./target", d / "link")
    os.symlink("/nonexistent/../x", d / "dangling")
    assert os.readlink(d / "link") == "./target"
    assert os.readlink(d / "dangling") == "/nonexistent/../x"
    assert (d / "link").read_bytes() == b"through the link"
    assert stat.S_ISLNK((d / "link").lstat().st_mode)
    assert stat.S_IMODE((d / "link").lstat().st_mode) == 0o777


def test_a_symlink_loop_is_eloop(d: Path) -> None:
    os.symlink("b", d / "a")
    os.symlink("a", d / "b")
    assert err(os.stat, d / "a") == "ELOOP"
    assert err(os.open, d / "a", os.O_RDONLY) == "ELOOP"


def test_an_unlinked_open_file_stays_readable_and_writable(d: Path) -> None:
    fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"before")
        os.unlink(d / "f")
        assert os.fstat(fd).st_nlink == 0 and os.listdir(d) == []
        os.pwrite(fd, b"after", 6)
        assert os.pread(fd, 20, 0) == b"beforeafter"
    finally:
        os.close(fd)
