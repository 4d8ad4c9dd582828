"""Determinism: replicas fed the same entries produce the same results and the same
state, whatever their store (twin or LMDB), however the entries are batched, and
however often they crash and replay from the log."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coord.kv.commands import (
    Cas,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Get,
    Put,
    Range,
    Txn,
)
from coord.kv.lmdb_state import LmdbKVStore
from coord.kv.machine import Applied, KVStateMachine
from coord.kv.store import MemoryKVStore
from coord.kv.types import ClientId
from coord.raft.types import Entry
from tests.unit.test_kv_support import CONFIG, MAP_SIZE, TTL, Log

_keys = st.sampled_from([b"a", b"b", b"c"])
_commands: st.SearchStrategy[Command] = (
    st.builds(Put, _keys, st.sampled_from([b"1", b"2"]))
    | st.builds(Delete, _keys)
    | st.builds(Cas, _keys, st.none() | st.sampled_from([b"1", b"2"]), st.just(b"3"))
    | st.builds(
        lambda k, n, then: Txn(
            (Compare(k, CompareTarget.VERSION, CompareOp.GT, n),),
            then=then,
            otherwise=(Range(b"", None, 2),),
        ),
        _keys,
        st.integers(0, 2),
        st.lists(st.builds(Put, _keys, st.just(b"t")) | st.builds(Get, _keys), max_size=2).map(
            tuple
        ),
    )
)


@dataclass(frozen=True)
class Step:
    """One proposed entry: what it is, and how far the leader's clock moved before it."""

    kind: str  # register | request | keepalive | noop | garbage
    dt: int  # clock change in ms (negative: a new leader with a slower clock)
    client: int = 0  # which registered client (modulo their number; -1: never registered)
    seq: int = 1
    acked: int = 0
    command: Command | None = None


# Mostly small clock moves, so several sessions are alive (and expire) together;
# now and then a long silence or a new leader whose clock is behind.
_dt = st.integers(0, 15).flatmap(
    lambda n: st.just(2 * TTL) if n == 0 else st.just(-TTL // 2) if n == 1 else st.integers(0, 300)
)
_register = st.builds(Step, st.just("register"), _dt)
_steps = st.one_of(
    _register,
    _register,
    st.builds(
        Step,
        st.just("request"),
        _dt,
        st.integers(-1, 3),
        st.integers(1, 6),
        st.integers(0, 4),
        _commands,
    ),
    st.builds(Step, st.just("keepalive"), _dt, st.integers(-1, 3), st.just(1), st.integers(0, 4)),
    st.builds(Step, st.just("noop"), _dt),
    st.builds(Step, st.just("garbage"), _dt),
)


def build(steps: list[Step]) -> list[Entry]:
    log = Log()
    clients: list[ClientId] = []
    for step in steps:
        log.now = max(0, log.now + step.dt)
        cid = ClientId(10**6)  # never registered
        if clients and step.client >= 0:
            cid = clients[step.client % len(clients)]
        if step.kind == "register":
            clients.append(ClientId(log.next_index))
            log.register()
        elif step.kind == "request" and step.command is not None:
            log.request(cid, step.seq, step.command, acked=step.acked)
        elif step.kind == "keepalive":
            log.keep_alive(cid, acked=step.acked)
        elif step.kind == "noop":
            log.noop()
        else:
            log.raw(b"\x92\x00")
    return log.entries


def one_by_one(machine: KVStateMachine, entries: list[Entry]) -> list[Applied]:
    return [a for e in entries for a in machine.apply([e])]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_steps, min_size=8, max_size=40), st.lists(st.integers(0, 40), max_size=20))
def test_twin_and_lmdb_replicas_agree(steps: list[Step], cuts: list[int]) -> None:
    """Same results entry by entry, and the same state at every batch boundary."""
    entries = build(steps)
    twin = KVStateMachine(MemoryKVStore(), CONFIG)
    expected: list[Applied] = []
    states = [twin.dump()]  # states[i]: after the first i entries
    for entry in entries:
        expected.extend(twin.apply([entry]))
        states.append(twin.dump())
    bounds = sorted({0, len(entries), *(c % (len(entries) + 1) for c in cuts)})
    with tempfile.TemporaryDirectory() as tmp, LmdbKVStore(tmp, map_size=MAP_SIZE) as store:
        real = KVStateMachine(store, CONFIG)
        got: list[Applied] = []
        for lo, hi in itertools.pairwise(bounds):
            got.extend(real.apply(entries[lo:hi]))
            assert real.dump() == states[hi]
        assert got == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(_steps, min_size=8, max_size=40),
    st.lists(st.tuples(st.integers(0, 40), st.booleans(), st.booleans()), max_size=4),
)
def test_crashes_and_replay_from_the_log_change_nothing(
    steps: list[Step], events: list[tuple[int, bool, bool]]
) -> None:
    """Apply with checkpoints and crashes (process or power loss) at arbitrary points,
    resuming each time from applied_index + 1: the end state equals a clean run."""
    entries = build(steps)
    clean = KVStateMachine(MemoryKVStore(), CONFIG)
    one_by_one(clean, entries)

    store = MemoryKVStore()
    machine = KVStateMachine(store, CONFIG)
    durable = 0
    for at, checkpoint, power_loss in sorted(events):
        target = min(at, len(entries))
        machine.apply(entries[machine.applied_index : target])
        if checkpoint:
            durable = store.checkpoint()
        store = store.crash(power_loss=power_loss)
        machine = KVStateMachine(store, CONFIG)
        # A crash never loses a checkpoint and never invents state.
        assert durable <= machine.applied_index <= max(target, durable)
    machine.apply(entries[machine.applied_index :])
    assert machine.dump() == clean.dump()
