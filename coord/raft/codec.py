"""Wire form of Raft messages: a compact msgpack array per message.

Invariants: `decode(encode(m)) == m` for every message; decoding a peer's
bytes either returns a fully type-checked message or raises `CodecError`
(never TypeError/IndexError from deep inside), so a malformed frame from a
peer is dropped and logged by the driver, never a crash.  Tags are part of
the protocol between versions: add new ones, never renumber.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from coord.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadCtx,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from coord.raft.snapshot import SnapshotMeta
from coord.raft.types import Entry, EntryKind, LogIndex, NodeId, Term


class CodecError(ValueError):
    """Bytes that are not a valid Raft message batch."""


_TAGS: dict[type, int] = {
    RequestVote: 1,
    RequestVoteResponse: 2,
    AppendEntries: 3,
    AppendEntriesResponse: 4,
    Heartbeat: 5,
    HeartbeatResponse: 6,
    ReadIndexRequest: 7,
    ReadIndexResponse: 8,
    InstallSnapshot: 9,
    InstallSnapshotResponse: 10,
    TimeoutNow: 11,
}


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise CodecError(f"expected a non-negative int, got {v!r:.40}")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise CodecError(f"expected a bool, got {v!r:.40}")
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"expected bytes, got {type(v).__name__}")
    return v


_KINDS: dict[int, EntryKind] = {int(k): k for k in EntryKind}


def _entry(raw: Any) -> Entry:
    # Per entry of every AppendEntries a follower decodes: the checks are inlined
    # and the kind is a dict lookup instead of EntryKind(...) (an enum call), which
    # took decode_batch of 32 entries from 45 to ~28 us (in-process benchmark).
    if type(raw) is not list or len(raw) != 4:
        raise CodecError("an entry is [term, index, kind, data]")
    term: Term
    index: LogIndex
    term, index, kind, data = raw
    if type(term) is not int or type(index) is not int or term < 0 or index < 0:
        raise CodecError(f"an entry's term and index are non-negative ints: {raw!r:.60}")
    ekind = _KINDS.get(kind) if type(kind) is int else None
    if ekind is None:
        raise CodecError(f"unknown entry kind {kind!r:.40}")
    # Term and LogIndex are NewTypes: identity at run time, so no call per field.
    return Entry(term, index, ekind, _bytes(data))


def _encode_one(m: Message) -> list[Any]:
    head = [_TAGS[type(m)], m.src, m.dst, m.term]
    match m:
        case RequestVote():
            vote = [*head, m.last_log_index, m.last_log_term, m.pre_vote]
            return [*vote, True] if m.transfer else vote  # old layout unless transferring
        case RequestVoteResponse():
            return [*head, m.granted, m.pre_vote]
        case AppendEntries():
            entries = [[e.term, e.index, int(e.kind), e.data] for e in m.entries]
            return [*head, m.prev_log_index, m.prev_log_term, entries, m.leader_commit]
        case AppendEntriesResponse():
            return [*head, m.success, m.match_index, m.reject_index, m.hint_index, m.hint_term]
        case Heartbeat():
            return [*head, m.commit, m.read_round]
        case HeartbeatResponse():
            return [*head, m.read_round]
        case ReadIndexRequest():
            return [*head, bytes(m.ctx)]
        case ReadIndexResponse():
            return [*head, bytes(m.ctx), m.index]
        case InstallSnapshot():
            meta = m.meta
            return [*head, [meta.index, meta.term, list(meta.voters), list(meta.learners),
                            meta.size, meta.digest, [list(a) for a in meta.addresses]],
                    m.offset, m.data]
        case InstallSnapshotResponse():
            return [*head, m.index, m.offset, m.done]
        case TimeoutNow():
            return head


def _ids(raw: list[Any]) -> tuple[NodeId, NodeId, Term]:
    return NodeId(_int(raw[1])), NodeId(_int(raw[2])), Term(_int(raw[3]))


def _d_vote(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    transfer = _bool(r[7]) if len(r) > 7 else False
    return RequestVote(s, d, t, LogIndex(_int(r[4])), Term(_int(r[5])), _bool(r[6]), transfer)


def _d_vote_resp(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return RequestVoteResponse(s, d, t, _bool(r[4]), _bool(r[5]))


def _d_append(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    if type(r[6]) is not list:
        raise CodecError("entries must be a list")
    entries = tuple([_entry(e) for e in r[6]])
    return AppendEntries(s, d, t, LogIndex(_int(r[4])), Term(_int(r[5])), entries,
                         LogIndex(_int(r[7])))


def _d_append_resp(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return AppendEntriesResponse(s, d, t, _bool(r[4]), LogIndex(_int(r[5])),
                                 LogIndex(_int(r[6])), LogIndex(_int(r[7])), Term(_int(r[8])))


def _d_hb(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return Heartbeat(s, d, t, LogIndex(_int(r[4])), _int(r[5]))


def _d_hb_resp(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return HeartbeatResponse(s, d, t, _int(r[4]))


def _d_read(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return ReadIndexRequest(s, d, t, ReadCtx(_bytes(r[4])))


def _d_read_resp(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return ReadIndexResponse(s, d, t, ReadCtx(_bytes(r[4])), LogIndex(_int(r[5])))


def _node_ids(v: Any) -> tuple[NodeId, ...]:
    if type(v) is not list:
        raise CodecError("a configuration is a list of node ids")
    return tuple(NodeId(_int(x)) for x in v)


def _addresses(v: Any) -> tuple[tuple[NodeId, str], ...]:
    if type(v) is not list or not all(
        type(a) is list and len(a) == 2 and type(a[1]) is str for a in v
    ):
        raise CodecError("an address book is a list of [id, address]")
    return tuple((NodeId(_int(a[0])), a[1]) for a in v)


def _meta(v: Any) -> SnapshotMeta:
    if type(v) is not list or len(v) != 7:
        raise CodecError(
            "a snapshot meta is [index, term, voters, learners, size, digest, addresses]"
        )
    index, term, voters, learners, size, digest, addresses = v
    return SnapshotMeta(LogIndex(_int(index)), Term(_int(term)), _node_ids(voters),
                        _node_ids(learners), _int(size), _int(digest), _addresses(addresses))


def _d_snap(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return InstallSnapshot(s, d, t, _meta(r[4]), _int(r[5]), _bytes(r[6]))


def _d_snap_resp(r: list[Any]) -> Message:
    s, d, t = _ids(r)
    return InstallSnapshotResponse(s, d, t, LogIndex(_int(r[4])), _int(r[5]), _bool(r[6]))


def _d_timeout_now(r: list[Any]) -> Message:
    return TimeoutNow(*_ids(r))


# tag -> (accepted numbers of array items, decoder)
_DECODERS: dict[int, tuple[tuple[int, ...], Callable[[list[Any]], Message]]] = {
    1: ((7, 8), _d_vote),
    2: ((6,), _d_vote_resp),
    3: ((8,), _d_append),
    4: ((9,), _d_append_resp),
    5: ((6,), _d_hb),
    6: ((5,), _d_hb_resp),
    7: ((5,), _d_read),
    8: ((6,), _d_read_resp),
    9: ((7,), _d_snap),
    10: ((7,), _d_snap_resp),
    11: ((4,), _d_timeout_now),
}


def encode_batch(messages: Sequence[Message]) -> bytes:
    """One payload for several messages to the same peer (one frame, one syscall)."""
    out: bytes = msgpack.packb([_encode_one(m) for m in messages], use_bin_type=True)
    return out


def decode_batch(payload: bytes) -> list[Message]:
    """The messages of a batch; raises CodecError on anything malformed."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated classes
        raise CodecError(f"not msgpack: {exc}") from None
    if type(raw) is not list:
        raise CodecError("a batch is a list of messages")
    out: list[Message] = []
    for item in raw:
        if type(item) is not list or not item or type(item[0]) is not int:
            raise CodecError("a message is a non-empty list starting with its tag")
        found = _DECODERS.get(item[0])
        if found is None:
            raise CodecError(f"unknown message tag {item[0]}")
        sizes, decode = found
        if len(item) not in sizes:
            raise CodecError(f"message tag {item[0]} needs {sizes} items, got {len(item)}")
        out.append(decode(item))
    return out
