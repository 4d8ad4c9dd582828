"""Raft messages on the wire: exact round trips, and malformed batches rejected
with CodecError (never another exception, never a half-decoded message)."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coord.raft.codec import CodecError, decode_batch, encode_batch
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

ids = st.integers(0, 2**63).map(NodeId)
terms = st.integers(0, 2**63).map(Term)
indexes = st.integers(0, 2**63).map(LogIndex)
entries = st.builds(Entry, terms, indexes, st.sampled_from(EntryKind), st.binary(max_size=64))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(RequestVote, ids, ids, terms, indexes, terms, st.booleans(), st.booleans()),
    st.builds(RequestVoteResponse, ids, ids, terms, st.booleans(), st.booleans()),
    st.builds(AppendEntries, ids, ids, terms, indexes, terms,
              st.lists(entries, max_size=4).map(tuple), indexes),
    st.builds(AppendEntriesResponse, ids, ids, terms, st.booleans(), indexes, indexes, indexes,
              terms),
    st.builds(Heartbeat, ids, ids, terms, indexes, st.integers(0, 2**40)),
    st.builds(HeartbeatResponse, ids, ids, terms, st.integers(0, 2**40)),
    st.builds(ReadIndexRequest, ids, ids, terms, st.binary(max_size=16).map(ReadCtx)),
    st.builds(ReadIndexResponse, ids, ids, terms, st.binary(max_size=16).map(ReadCtx), indexes),
    st.builds(InstallSnapshot, ids, ids, terms,
              st.builds(SnapshotMeta, indexes, terms, st.lists(ids, max_size=5).map(tuple),
                        st.lists(ids, max_size=2).map(tuple), st.integers(0, 2**40),
                        st.integers(0, 2**64 - 1)),
              st.integers(0, 2**40), st.binary(max_size=64)),
    st.builds(InstallSnapshotResponse, ids, ids, terms, indexes, st.integers(0, 2**40),
              st.booleans()),
    st.builds(TimeoutNow, ids, ids, terms),
)


@given(st.lists(messages, max_size=6))
@settings(max_examples=300)
def test_every_message_round_trips_exactly(batch: list[Message]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_random_bytes_raise_codec_error_only(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_batch(data)


@pytest.mark.parametrize(
    "raw",
    [
        {"not": "a list"},
        [[99, 1, 2, 3]],  # unknown tag
        [[5, 1, 2, 3]],  # heartbeat missing fields
        [[5, 1, 2, 3, 4, 5, 6]],  # too many fields
        [[5, -1, 2, 3, 4, 5]],  # negative id
        [[5, "1", 2, 3, 4, 5]],  # wrong type
        [[1, 1, 2, 3, 4, 5, 1]],  # pre_vote must be a bool, not an int
        [[3, 1, 2, 3, 0, 0, [[1, 1, 9, b""]], 0]],  # unknown entry kind
        [[3, 1, 2, 3, 0, 0, [[1, 1, 1, "text"]], 0]],  # entry data must be bytes
        [[3, 1, 2, 3, 0, 0, [[1, 1, True, b""]], 0]],  # a kind is an int, not a bool
        [[3, 1, 2, 3, 0, 0, [[1, -1, 1, b""]], 0]],  # negative entry index
        [[3, 1, 2, 3, 0, 0, [[1.0, 1, 1, b""]], 0]],  # entry term must be an int
        [[3, 1, 2, 3, 0, 0, [[1, 1, 1]], 0]],  # an entry has four fields
        [[3, 1, 2, 3, 0, 0, "entries", 0]],
        [[]],
    ],
)
def test_malformed_batches_are_rejected(raw: object) -> None:
    with pytest.raises(CodecError):
        decode_batch(msgpack.packb(raw, use_bin_type=True))
