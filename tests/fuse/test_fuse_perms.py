"""Permissions through a real mount, by unprivileged processes (uid 1000/1001)
with and without supplementary groups: the kernel (default_permissions) and
memfs (with the groups the mount read from /proc) must agree."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.ddfs_mount import DdfsMount, run_as

ALICE, BOB, STAFF = 1000, 1001, 2001


@pytest.fixture(scope="module")
def mount() -> Iterator[DdfsMount]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as other users")
    with DdfsMount() as m:
        yield m


@pytest.fixture
def d(mount: DdfsMount, request: pytest.FixtureRequest) -> Path:
    path: Path = mount.mountpoint / request.node.name
    path.mkdir()
    return path


def test_owner_group_and_other_bits(d: Path) -> None:
    (d / "private").write_text("secret")
    os.chmod(d / "private", 0o600)
    (d / "shared").write_text("hello")
    os.chmod(d / "shared", 0o644)
    out = run_as(ALICE, ALICE, [], [
        ["read", str(d / "private")],
        ["read", str(d / "shared")],
        ["write", str(d / "shared"), "x"],
        ["touch", str(d / "new")],
        ["unlink", str(d / "shared")],
    ])
    assert out == ["EACCES", "hello", "EACCES", "EACCES", "EACCES"]


def test_supplementary_group_grants_access(d: Path) -> None:
    team = d / "team"
    team.mkdir(mode=0o770)
    os.chmod(team, 0o770)
    os.chown(team, 0, STAFF)
    ops: list[list[object]] = [["groups"], ["touch", str(team / "f")], ["listdir", str(team)]]
    member = run_as(ALICE, ALICE, [STAFF], ops)
    assert member == [[STAFF], "ok", ["f"]]
    outsider = run_as(BOB, BOB, [], ops)
    assert outsider == [[], "EACCES", "EACCES"]
    st = (team / "f").stat()
    assert (st.st_uid, st.st_gid) == (ALICE, ALICE)


def test_sticky_directory(d: Path) -> None:
    tmp = d / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    assert run_as(ALICE, ALICE, [], [["touch", str(tmp / "alice")]]) == ["ok"]
    bob = run_as(BOB, BOB, [], [
        ["unlink", str(tmp / "alice")],
        ["rename", str(tmp / "alice"), str(tmp / "stolen")],
        ["touch", str(tmp / "bob")],
        ["unlink", str(tmp / "bob")],
    ])
    assert bob == ["EPERM", "EPERM", "ok", "ok"]
    assert run_as(ALICE, ALICE, [], [["unlink", str(tmp / "alice")]]) == ["ok"]


def test_setgid_directory(d: Path) -> None:
    shared = d / "shared"
    shared.mkdir()
    os.chown(shared, 0, STAFF)
    os.chmod(shared, 0o2777)
    out = run_as(ALICE, ALICE, [STAFF], [
        ["touch", str(shared / "f")],
        ["mkdir", str(shared / "sub")],
    ])
    assert out == ["ok", "ok"]
    assert (shared / "f").stat().st_gid == STAFF
    sub = (shared / "sub").stat()
    assert sub.st_gid == STAFF and sub.st_mode & stat.S_ISGID


def test_ownership_changes_by_users(d: Path) -> None:
    f = d / "f"
    f.write_text("")
    os.chown(f, ALICE, ALICE)
    os.chmod(d, 0o777)
    alice = run_as(ALICE, ALICE, [STAFF], [
        ["chmod", str(f), 0o600],
        ["chown", str(f), BOB, -1],
        ["chown", str(f), -1, STAFF],
        ["chown", str(f), -1, 4242],
        ["utime", str(f), 1, 2],
    ])
    assert alice == ["ok", "EPERM", "ok", "EPERM", "ok"]
    bob = run_as(BOB, BOB, [], [["chmod", str(f), 0o777], ["utime", str(f), 5, 6]])
    assert bob == ["EPERM", "EPERM"]
    st = f.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime) == (STAFF, 0o600, 2)


def test_a_user_can_write_a_file_it_created_read_only(d: Path) -> None:
    os.chmod(d, 0o777)
    code: list[list[object]] = [
        ["open", str(d / "ro"), os.O_CREAT | os.O_WRONLY, 0o444],
        ["write", str(d / "ro"), "again"],
    ]
    out = run_as(ALICE, ALICE, [], code)
    assert isinstance(out[0], int) and out[1] == "EACCES"
    assert stat.S_IMODE((d / "ro").stat().st_mode) == 0o444
