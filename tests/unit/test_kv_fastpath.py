"""The apply loop's fast path for ClientRequest(Put) (`decode_put_request` and
`KVStateMachine._apply_put`) is the general path made cheaper, never different:
the decoder accepts exactly the entries `decode_record` decodes to a Put request,
with the same fields, and a machine with the fast path gives the same results and
the same state as one without it, entry by entry."""

from __future__ import annotations

import copy
import io
import itertools
import tempfile
from dataclasses import replace

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coord.kv import machine as machine_module
from coord.kv.codec import CodecError
from coord.kv.commands import (
    ClientRequest,
    Put,
    PutRequest,
    decode_put_request,
    decode_record,
)
from coord.kv.lmdb_state import LmdbKVStore
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.store import KVStore, MemoryKVStore
from coord.kv.types import WatchEvent
from coord.raft.types import Entry, LogIndex
from tests.unit.test_kv_determinism import _steps, build
from tests.unit.test_kv_support import CONFIG, MAP_SIZE


def _general(raw: bytes) -> PutRequest | None:
    """What the general decoder makes of `raw`, in the fast decoder's terms."""
    try:
        record = decode_record(raw)
    except CodecError:
        return None
    body = record.body
    if not (isinstance(body, ClientRequest) and isinstance(body.command, Put)):
        return None
    return (record.timestamp, body.client_id, body.seq, body.acked,
            body.command.key, body.command.value)


_VALID = [5, [18, 3, 7, 6, [1, b"k", b"v"]]]
# every field replaced by values that are wrong (or right) in some way
_FIELD_VALUES = st.sampled_from(
    [0, 1, 2, 18, -1, True, False, None, 2**64 - 1, b"", b"k", b"x" * 511, b"x" * 512,
     "k", [], [1, b"k", b"v"], [1, b"k"], [2, b"k"], [True, b"k", b"v"], 1.0]
)


@st.composite
def _mutated(draw: st.DrawFn) -> object:
    """The valid record with up to three fields (at any depth) replaced or dropped."""
    obj: list[object] = [5, [18, 3, 7, 6, [1, b"k", b"v"]]]
    paths = [(), (1,), (1, 4)]
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths))
        target: object = obj
        for i in path:  # a path an earlier change broke leads nowhere: skip it
            if not (isinstance(target, list) and i < len(target)):
                break
            target = target[i]
        if not isinstance(target, list) or not target:
            continue
        i = draw(st.integers(0, len(target) - 1))
        if draw(st.booleans()):
            target[i] = copy.deepcopy(draw(_FIELD_VALUES))  # never share a list
        else:
            del target[i]
    return obj


@settings(max_examples=400, deadline=None)
@given(_mutated())
def test_the_fast_decoder_agrees_with_the_general_one(obj: object) -> None:
    raw = msgpack.packb(obj, use_bin_type=True)
    assert decode_put_request(raw) == _general(raw)


@given(st.binary(max_size=40))
def test_the_fast_decoder_refuses_what_the_general_one_refuses(raw: bytes) -> None:
    assert decode_put_request(raw) == _general(raw)


def test_the_fast_decoder_takes_a_put_request() -> None:
    raw = msgpack.packb(_VALID, use_bin_type=True)
    assert decode_put_request(raw) == (5, 3, 7, 6, b"k", b"v")
    assert decode_put_request(raw) == _general(raw)


def _run(machine: KVStateMachine, entries: list[Entry], cuts: list[int]) -> list[Applied]:
    bounds = sorted({0, len(entries), *(c % (len(entries) + 1) for c in cuts)})
    out: list[Applied] = []
    for lo, hi in itertools.pairwise(bounds):
        out.extend(machine.apply(entries[lo:hi]))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(
    st.lists(_steps, min_size=8, max_size=40),
    st.lists(st.integers(0, 40), max_size=8),
    st.sampled_from([0, 3, 40]),
)
def test_a_machine_without_the_fast_path_gives_the_same_results_and_state(
    monkeypatch: pytest.MonkeyPatch, steps: list[object], cuts: list[int], retention: int
) -> None:
    """Results, state, and the watch event log with its floor (retention 3 drops
    events on most puts, with slack 0; 40 never needs to)."""
    entries = build(steps)  # type: ignore[arg-type]
    config = replace(CONFIG, event_retention=retention)
    slow_store = MemoryKVStore()
    with monkeypatch.context() as m:
        m.setattr(machine_module, "decode_put_request", lambda raw: None)
        slow = KVStateMachine(slow_store, config)
        expected = _run(slow, entries, cuts)
    with tempfile.TemporaryDirectory() as tmp, LmdbKVStore(tmp, map_size=MAP_SIZE) as store:
        fast = KVStateMachine(store, config)
        assert _run(fast, entries, cuts) == expected
        assert fast.dump() == slow.dump()
        assert _events(store) == _events(slow_store)


def _events(store: KVStore) -> tuple[LogIndex, list[WatchEvent]]:
    with store.reader() as r:
        return r.events_floor(), r.events(LogIndex(0), None, 0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_steps, min_size=8, max_size=40),
    st.lists(st.integers(0, 40), max_size=8),
    st.lists(st.integers(0, 40), max_size=8),
)
def test_snapshots_are_the_same_bytes_however_the_entries_were_batched(
    steps: list[object], cuts_a: list[int], cuts_b: list[int]
) -> None:
    """What a commit writes (lazy idle index, write-back log time, replies beside
    their session) depends on the entries only: two members that batched them
    differently stream identical snapshots, and a restored one streams them again."""
    entries = build(steps)  # type: ignore[arg-type]
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cuts in (("a", cuts_a), ("b", cuts_b)):
            with LmdbKVStore(f"{tmp}/{name}", map_size=MAP_SIZE) as store:
                _run(KVStateMachine(store, CONFIG), entries, cuts)
                out = io.BytesIO()
                store.write_snapshot(out)
                images.append(out.getvalue())
        assert images[0] == images[1]
        with LmdbKVStore(f"{tmp}/c", map_size=MAP_SIZE) as restored:
            restored.restore_snapshot(io.BytesIO(images[0]))
            again = io.BytesIO()
            restored.write_snapshot(again)
            assert again.getvalue() == images[0]
