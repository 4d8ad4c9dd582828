"""Consistency check of the FS state: the invariants listed in `fs.meta.state`.

`check(reader)` returns a list of human-readable problems (empty: consistent).
It reads every table page by page but keeps per-inode tallies in memory, so
it is meant for tests and for offline checks of a member's store, not for a
live server's hot path.
"""

from __future__ import annotations

import stat
import struct
from collections import Counter

import msgpack

from fs.meta.state import (
    CHUNKS,
    COOKIES,
    DIRENTS,
    HANDLES,
    INODES,
    OPEN,
    ORPHANS,
    SESSION_OPEN,
    XATTRS,
    FsReader,
    InodeRec,
)
from fs.types import ROOT_INODE

_U64 = struct.Struct(">Q")
_PAIR = struct.Struct(">QQ")
_PAGE = 4096


def _all(r: FsReader, table: str) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    start = b""
    for _ in range(1 << 40):  # bounded by the table's size
        rows = r.rows(table, start, _PAGE)
        out.extend(rows)
        if len(rows) < _PAGE:
            return out
        start = rows[-1][0] + b"\x00"
    return out


def _inodes(r: FsReader) -> dict[int, InodeRec]:
    out = {}
    for key, _ in _all(r, INODES):
        ino = _U64.unpack(key)[0]
        rec = r.inode(ino)
        assert rec is not None
        out[ino] = rec
    return out


def _check_entries(r: FsReader, inodes: dict[int, InodeRec], problems: list[str]) -> Counter[int]:
    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    for key, raw in _all(r, DIRENTS):
        parent, name = _U64.unpack(key[:8])[0], key[8:]
        child, cookie = msgpack.unpackb(raw)
        p, c = inodes.get(parent), inodes.get(child)
        if p is None or not stat.S_ISDIR(p.mode) or c is None:
            problems.append(f"entry {parent}/{name!r} -> {child}: bad parent or child")
            continue
        if r.rows(COOKIES, _PAIR.pack(parent, cookie), 1) != [(_PAIR.pack(parent, cookie), name)]:
            problems.append(f"entry {parent}/{name!r}: cookie row {cookie} missing")
        if cookie >= p.next_cookie:
            problems.append(f"entry {parent}/{name!r}: cookie {cookie} >= {p.next_cookie}")
        links[child] += 1
        if stat.S_ISDIR(c.mode):
            subdirs[parent] += 1
            if c.parent != parent:
                problems.append(f"directory {child} has parent {c.parent}, entry in {parent}")
    cookie_rows = _all(r, COOKIES)
    if len(cookie_rows) != sum(links.values()):
        problems.append(f"{len(cookie_rows)} cookie rows for {sum(links.values())} entries")
    for ino, rec in inodes.items():
        if stat.S_ISDIR(rec.mode):
            want = 2 + subdirs[ino]
            named = links[ino] + (1 if ino == ROOT_INODE else 0)
            if rec.nlink != want or named != 1:
                problems.append(f"directory {ino}: nlink {rec.nlink} (want {want}), "
                                f"{named} names")
        elif rec.nlink != links[ino]:
            problems.append(f"inode {ino}: nlink {rec.nlink}, {links[ino]} names")
    return links


def _check_opens(r: FsReader, inodes: dict[int, InodeRec], problems: list[str]) -> None:
    opens = {_PAIR.unpack(k) for k, _ in _all(r, OPEN)}
    mirror = {tuple(reversed(_PAIR.unpack(k))) for k, _ in _all(r, SESSION_OPEN)}
    if opens != mirror:
        problems.append(f"open rows {sorted(opens)} != session rows {sorted(mirror)}")
    open_inodes = {ino for ino, _ in opens}
    orphans = {_U64.unpack(k)[0] for k, _ in _all(r, ORPHANS)}
    for ino in open_inodes - set(inodes):
        problems.append(f"open rows for missing inode {ino}")
    for ino, rec in inodes.items():
        if rec.nlink == 0 and (ino not in orphans or ino not in open_inodes):
            problems.append(f"inode {ino}: nlink 0 but not an open orphan")
    for ino in orphans:
        if ino not in inodes or inodes[ino].nlink != 0:
            problems.append(f"orphan row for inode {ino} that is not an orphan")


def _check_chunks(r: FsReader, inodes: dict[int, InodeRec], problems: list[str]) -> None:
    per_inode: Counter[int] = Counter()
    rows = _all(r, CHUNKS)
    for key, raw in rows:
        ino, index = _PAIR.unpack(key)
        handle = msgpack.unpackb(raw)[0]
        per_inode[ino] += 1
        if r.rows(HANDLES, _U64.pack(handle), 1) != [(_U64.pack(handle), key)]:
            problems.append(f"chunk ({ino}, {index}): handle row {handle} missing")
        if ino not in inodes or not stat.S_ISREG(inodes[ino].mode):
            problems.append(f"chunk ({ino}, {index}) of a missing or non-regular inode")
    if len(_all(r, HANDLES)) != len(rows):
        problems.append("handle rows do not match chunk rows")
    for ino, rec in inodes.items():
        if rec.chunks != per_inode[ino]:
            problems.append(f"inode {ino}: chunks {rec.chunks}, {per_inode[ino]} rows")


def check(r: FsReader) -> list[str]:
    problems: list[str] = []
    inodes = _inodes(r)
    if ROOT_INODE not in inodes:
        return ["no root directory"]
    if r.counter(b"inodes") != len(inodes):
        problems.append(f"inode counter {r.counter(b'inodes')} != {len(inodes)} inodes")
    if inodes and max(inodes) >= r.counter(b"next_inode"):
        problems.append("an inode number is not below next_inode")
    _check_entries(r, inodes, problems)
    _check_opens(r, inodes, problems)
    _check_chunks(r, inodes, problems)
    for key, _ in _all(r, XATTRS):
        if _U64.unpack(key[:8])[0] not in inodes:
            problems.append(f"xattr {key[8:]!r} of missing inode {_U64.unpack(key[:8])[0]}")
    return problems
