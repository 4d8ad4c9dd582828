"""Permission checks as unprivileged users (uid 1000 and 1001, with and
without the supplementary group 2001): the rwx classes, search permission,
root's overrides, chmod/chown/chgrp rules and sticky directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.posix.support import ALICE, BOB, STAFF, as_user, err


def _file(path: Path, mode: int, uid: int = 0, gid: int = 0, data: bytes = b"data") -> Path:
    path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def test_the_owner_class_applies_even_when_others_may_read(d: Path) -> None:
    f = _file(d / "f", 0o044, uid=ALICE)
    assert as_user(ALICE, ["read", str(f)]) == ["EACCES"]
    assert as_user(BOB, ["read", str(f)]) == ["data"]


def test_a_supplementary_group_grants_the_group_class(d: Path) -> None:
    f = _file(d / "f", 0o640, gid=STAFF)
    assert as_user(ALICE, ["read", str(f)], groups=(STAFF,)) == ["data"]
    assert as_user(ALICE, ["read", str(f)]) == ["EACCES"]


def test_writing_without_write_permission_is_eacces(d: Path) -> None:
    f = _file(d / "f", 0o644, uid=BOB)
    assert as_user(ALICE, ["write", str(f), "x"]) == ["EACCES"]
    assert f.read_bytes() == b"data"


def test_search_permission_is_needed_to_reach_entries(d: Path) -> None:
    sub = d / "sub"
    sub.mkdir()
    _file(sub / "f", 0o644)
    os.chmod(sub, 0o744)  # others may list, not search
    assert as_user(ALICE, ["listdir", str(sub)], ["stat", str(sub / "f")])[1] == "EACCES"
    assert as_user(ALICE, ["listdir", str(sub)])[0] == ["f"]


def test_creating_an_entry_needs_write_permission_on_the_directory(d: Path) -> None:
    os.chmod(d, 0o755)
    assert as_user(ALICE, ["touch", str(d / "new")], ["mkdir", str(d / "sub")]) == [
        "EACCES", "EACCES"]
    os.chmod(d, 0o777)
    assert as_user(ALICE, ["touch", str(d / "new")]) == ["ok"]


def test_root_reads_and_writes_a_file_without_permission_bits(d: Path) -> None:
    f = _file(d / "f", 0o000, uid=ALICE)
    assert f.read_bytes() == b"data"
    f.write_bytes(b"by root")
    assert f.read_bytes() == b"by root"


def test_root_may_not_execute_a_file_without_any_x_bit(d: Path) -> None:
    script = _file(d / "script", 0o644, data=b"#!/bin/sh\nexit 0\n")
    assert err(subprocess.run, [str(script)], check=False) == "EACCES"
    assert not os.access(script, os.X_OK)


def test_chmod_by_a_non_owner_is_eperm(d: Path) -> None:
    f = _file(d / "f", 0o666, uid=BOB)
    assert as_user(ALICE, ["chmod", str(f), 0o777]) == ["EPERM"]
    assert as_user(BOB, ["chmod", str(f), 0o600]) == ["ok"]


def test_chown_by_a_non_root_owner_is_eperm(d: Path) -> None:
    f = _file(d / "f", 0o644, uid=ALICE)
    assert as_user(ALICE, ["chown", str(f), BOB, -1]) == ["EPERM"]
    assert f.stat().st_uid == ALICE


def test_the_owner_may_chgrp_to_a_supplementary_group_only(d: Path) -> None:
    f = _file(d / "f", 0o644, uid=ALICE, gid=ALICE)
    assert as_user(ALICE, ["chown", str(f), -1, STAFF]) == ["EPERM"]
    assert as_user(ALICE, ["chown", str(f), -1, STAFF], groups=(STAFF,)) == ["ok"]
    assert f.stat().st_gid == STAFF


def test_a_sticky_dir_forbids_unlink_and_rename_by_a_non_owner(d: Path) -> None:
    os.chmod(d, 0o1777)
    f = _file(d / "f", 0o666, uid=ALICE)
    assert as_user(BOB, ["unlink", str(f)], ["rename", str(f), str(d / "g")]) == [
        "EPERM", "EPERM"]
    assert f.exists()


def test_a_sticky_dir_lets_the_entry_owner_remove_it(d: Path) -> None:
    os.chmod(d, 0o1777)
    f = _file(d / "f", 0o600, uid=ALICE)
    assert as_user(ALICE, ["unlink", str(f)]) == ["ok"]


def test_a_sticky_dir_lets_the_directory_owner_remove_any_entry(d: Path) -> None:
    os.chown(d, BOB, BOB)
    os.chmod(d, 0o1777)
    f = _file(d / "f", 0o600, uid=ALICE)
    assert as_user(BOB, ["unlink", str(f)]) == ["ok"]


def test_access_reports_what_the_caller_may_do(d: Path) -> None:
    f = _file(d / "f", 0o640, uid=ALICE, gid=STAFF)
    check = [["access", str(f), os.R_OK], ["access", str(f), os.W_OK]]
    assert as_user(ALICE, *check) == [True, True]
    assert as_user(BOB, *check, groups=(STAFF,)) == [True, False]
    assert as_user(BOB, *check) == [False, False]
