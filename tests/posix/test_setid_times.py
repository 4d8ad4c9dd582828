"""Set-id bits (set-gid directories, what clears set-uid/set-gid) and the
time rules (utimensat's "now" versus explicit times, what changes ctime and
mtime)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from tests.posix.support import ALICE, BOB, STAFF, as_user, run_code_as

TICK = 0.05  # seconds: past the coarse clock tick local file systems stamp times with


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_setgid_dir_gives_a_new_file_its_group(d: Path) -> None:
    os.chown(d, 0, STAFF)
    os.chmod(d, 0o2777)
    assert as_user(ALICE, ["touch", str(d / "f")]) == ["ok"]  # ALICE is not in STAFF
    st = (d / "f").stat()
    assert (st.st_uid, st.st_gid) == (ALICE, STAFF)


def test_a_setgid_dir_gives_a_new_subdir_its_group_and_setgid(d: Path) -> None:
    os.chown(d, 0, STAFF)
    os.chmod(d, 0o2777)
    assert as_user(ALICE, ["mkdir", str(d / "sub"), 0o755]) == ["ok"]
    st = (d / "sub").stat()
    assert st.st_gid == STAFF and st.st_mode & stat.S_ISGID


def test_a_write_by_a_non_owner_clears_setuid_and_setgid(d: Path) -> None:
    """Seen by the writer at once (fstat before close), as pjdfstest chmod/12 checks."""
    f = d / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o6777)
    code = (f"fd = os.open({str(f)!r}, os.O_WRONLY)\n"
            "os.write(fd, b'by bob')\n"
            "print(oct(os.fstat(fd).st_mode & 0o7777), end='')\n")
    assert run_code_as(BOB, BOB, [], code) == "0o777"
    assert _mode(f) == 0o777


def test_chown_clears_setuid_even_by_root(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o4755)
    os.chown(f, ALICE, -1)
    assert _mode(f) == 0o755


def test_chmod_by_an_owner_outside_the_group_drops_setgid(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.chown(f, ALICE, STAFF)
    assert as_user(ALICE, ["chmod", str(f), 0o2755]) == ["ok"]
    assert _mode(f) == 0o755
    assert as_user(ALICE, ["chmod", str(f), 0o2755], groups=(STAFF,)) == ["ok"]
    assert _mode(f) == 0o2755


def test_utime_now_by_a_writer_who_is_not_the_owner_is_allowed(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o666)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert run_code_as(ALICE, ALICE, [], f"os.utime({str(f)!r})") == ""  # now: no error
    assert f.stat().st_mtime_ns > 1_000_000_000


def test_explicit_times_by_a_writer_who_is_not_the_owner_are_eperm(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o666)
    assert as_user(ALICE, ["utime", str(f), 5, 5]) == ["EPERM"]


def test_utime_now_without_write_permission_is_eacces(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o644)
    assert run_code_as(ALICE, ALICE, [], f"os.utime({str(f)!r})") == "EACCES"


def test_explicit_times_are_kept_to_the_nanosecond(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_234_567_890_123_456_789, 1_500_000_000_987_654_321))
    st = f.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_234_567_890_123_456_789,
                                                 1_500_000_000_987_654_321)


def test_chmod_changes_ctime_but_not_mtime(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    before = f.stat()
    time.sleep(TICK)
    os.chmod(f, 0o600)
    after = f.stat()
    assert after.st_ctime_ns > before.st_ctime_ns and after.st_mtime_ns == before.st_mtime_ns


def test_a_write_changes_mtime_and_ctime(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    before = f.stat()
    time.sleep(TICK)
    with open(f, "ab") as out:
        out.write(b"more")
    after = f.stat()
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns


def test_a_failed_ftruncate_changes_nothing(d: Path) -> None:
    f = d / "f"
    f.write_bytes(b"data")
    os.chmod(d, 0o777)
    before = f.stat()
    code = (f"fd = os.open({str(f)!r}, os.O_RDONLY)\n"
            "os.ftruncate(fd, 1)\n")  # a read-only descriptor: EINVAL
    assert run_code_as(ALICE, ALICE, [], code) == "EINVAL"
    after = f.stat()
    assert (after.st_size, after.st_ctime_ns) == (before.st_size, before.st_ctime_ns)
