"""Wire forms: every FS command, query and result round-trips; malformed bytes are
CodecError (never another exception); the KV envelope carries FS commands."""

from __future__ import annotations

import contextlib
import stat

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coord.kv.codec import CodecError
from coord.kv.commands import (
    ClientRequest,
    EndSession,
    ExtCommand,
    LeaderCommand,
    LogRecord,
    decode_body,
    decode_record,
    encode_body,
    encode_record,
)
from coord.kv.results import ExtResult, SessionEndedResult
from coord.kv.results import decode_result as decode_kv
from coord.kv.results import encode_result as encode_kv
from coord.kv.types import ClientId, LogTime, SeqNo
from fs.meta import commands as c
from fs.meta import results as r
from fs.types import (
    Attr,
    ChunkHandle,
    ChunkLocation,
    ChunkVersion,
    Cred,
    DirEntry,
    InodeId,
    ServerId,
    SetAttrFields,
    StatFs,
)

CRED = Cred(1000, 100, (4, 24, 27), 4242)
I1, I2 = InodeId(1), InodeId(77)
ATTR = Attr(I2, stat.S_IFREG | 0o644, 1, 1000, 100, 12345, 1, 2, 3, 0, 24)
LOC = ChunkLocation(3, ChunkHandle(9), ChunkVersion(4), ((ServerId(1), "h:1"), (ServerId(2), "")))

COMMANDS: list[c.FsCommand] = [
    c.Mknod(I1, b"n", stat.S_IFCHR | 0o600, 0x801, CRED),
    c.Mkdir(I1, b"d", 0o755, CRED),
    c.Symlink(I1, b"l", b"/target", CRED),
    c.Link(I2, I1, b"l2", CRED),
    c.Unlink(I1, b"n", CRED),
    c.Rmdir(I1, b"d", CRED),
    c.Rename(I1, b"a", I2, b"b", 2, CRED),
    c.SetAttr(I2, SetAttrFields(mode=0o600, size=10, mtime_ns=5), CRED, True),
    c.SetAttr(I2, SetAttrFields(), CRED),
    c.SetXattr(I2, b"user.k", b"\x00\xff", 1, CRED),
    c.RemoveXattr(I2, b"user.k", CRED),
    c.Create(I1, b"f", 0o644, 0o101, CRED),
    c.Open(I2, 2, CRED),
    c.Release(I2),
    c.AllocChunk(I2, 5, (ServerId(3), ServerId(1))),
    c.AcquireLease(I2, 5),
    c.DropReplica(ChunkHandle(9), ServerId(2)),
    c.SetSize(I2, 1 << 40, True, CRED),
    c.ServerState(ServerId(3), "127.0.0.1:9", 1 << 40, 1 << 39, False),
]
QUERIES: list[c.FsQuery] = [
    c.Lookup(I1, b"x", CRED),
    c.GetAttr(I2),
    c.ReadLink(I2),
    c.ReadDir(I1, 17, 100, CRED),
    c.Access(I2, 7, CRED),
    c.StatFsQuery(),
    c.GetXattr(I2, b"user.k", CRED),
    c.ListXattr(I2, CRED),
    c.ChunkLocations(I2, 0, 16),
    c.Garbage(ServerId(2), (ChunkHandle(1), ChunkHandle(2))),
    c.ListServers(),
    c.UnderReplicated((ServerId(1),), 3, 10),
    c.ChunkInfo(ChunkHandle(9)),
]
RESULTS: list[r.FsResult] = [
    r.FsErr(2, "no such entry"),
    r.Done(),
    r.AttrResult(ATTR),
    r.DataResult(b"target"),
    r.NamesResult((b"user.a", b"trusted.b")),
    r.EntriesResult((DirEntry(b"f", ATTR, 3), DirEntry(b"g", ATTR, 9)), True),
    r.StatFsResult(StatFs(4096, 10, 5, 5, 3, 100)),
    r.ChunkResult(LOC),
    r.LeaseResult(LOC, ServerId(1), 42, 10**18, 10_000),
    r.ChunksResult((LOC, LOC)),
    r.HandlesResult((ChunkHandle(5),)),
    r.ServersResult((r.ServerRecord(ServerId(1), "h:1", 10, 5, True),)),
    r.CountResult(3, False),
]


def test_every_message_class_has_an_example() -> None:
    assert {type(m) for m in COMMANDS} == set(c.command_classes())
    assert {type(m) for m in QUERIES} == set(c.query_classes())
    assert {type(m) for m in RESULTS} == set(r.result_classes())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda m: type(m).__name__)
def test_commands_round_trip(command: c.FsCommand) -> None:
    assert c.decode_command(c.encode_command(command)) == command


@pytest.mark.parametrize("query", QUERIES, ids=lambda m: type(m).__name__)
def test_queries_round_trip(query: c.FsQuery) -> None:
    assert c.decode_query(c.encode_query(query)) == query


@pytest.mark.parametrize("result", RESULTS, ids=lambda m: type(m).__name__)
def test_results_round_trip(result: r.FsResult) -> None:
    assert r.decode_result(r.encode_result(result)) == result


def test_commands_and_queries_do_not_decode_as_each_other() -> None:
    with pytest.raises(CodecError):
        c.decode_query(c.encode_command(COMMANDS[0]))
    with pytest.raises(CodecError):
        c.decode_command(c.encode_query(QUERIES[0]))


@pytest.mark.parametrize(
    "wire",
    [
        [1, 1, b"n", 0o644, 0, [0, 0, [], 0], "extra"],  # too many fields
        [1, 1, b"n", 0o644, 0],  # too few
        [2, -1, b"d", 0o755, [0, 0, [], 0]],  # negative inode
        [2, 1, "d", 0o755, [0, 0, [], 0]],  # str name
        [2, 1, b"d", 0o755, [0, 0, [1.5], 0]],  # float group
        [2, True, b"d", 0o755, [0, 0, [], 0]],  # bool where an int belongs
        [999],  # unknown tag
        [],
        "not a list",
    ],
)
def test_malformed_commands_are_codec_errors(wire: object) -> None:
    with pytest.raises(CodecError):
        c.decode_command(msgpack.packb(wire, use_bin_type=True))


def test_structural_checks_reject_bad_values() -> None:
    with pytest.raises(CodecError):
        c.decode_query(msgpack.packb([67, 1, 0, 0, [0, 0, [], 0]]))  # readdir limit 0
    with pytest.raises(ValueError):
        c.ReadDir(I1, 0, c.MAX_READDIR + 1, CRED)


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_codec_error(raw: bytes) -> None:
    for decode in (c.decode_command, c.decode_query, r.decode_result):
        with contextlib.suppress(CodecError):
            decode(raw)


def test_the_kv_envelope_carries_fs_commands_and_leader_commands() -> None:
    ext = ExtCommand(1, c.encode_command(COMMANDS[1]))
    for body in (
        ClientRequest(ClientId(5), SeqNo(2), SeqNo(1), ext),
        LeaderCommand(ext),
        EndSession(ClientId(5)),
    ):
        assert decode_body(encode_body(body)) == body
        record = LogRecord(LogTime(7), body)
        assert decode_record(encode_record(record)) == record
    for result in (ExtResult(b"\x01\x02"), SessionEndedResult(ClientId(3))):
        assert decode_kv(encode_kv(result)) == result


def test_extension_spaces_and_payloads_are_checked() -> None:
    with pytest.raises(ValueError):
        ExtCommand(0, b"")
    with pytest.raises(CodecError):
        decode_body(msgpack.packb([20, [1, b"x"]]))  # a leader command of a KV Put
    with pytest.raises(CodecError):
        decode_body(msgpack.packb([18, 1, 1, 0, [7, 1, "not bytes"]]))
