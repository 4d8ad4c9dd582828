"""coord.trace: Lamport ordering, send/receive matching, Mermaid output, JSONL files."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from coord.clock.lamport import LamportClock
from coord.trace import (
    EventKind,
    TraceEvent,
    TraceRecorder,
    append_jsonl,
    lamport_order,
    match_messages,
    max_lamport,
    message_counts,
    read_jsonl,
    to_mermaid,
)


def ping_pong() -> TraceRecorder:
    """a -> b PING, b notes, b -> a PONG (reply), a -> b LOST never arrives."""
    tr = TraceRecorder()
    a, b = LamportClock(), LamportClock()
    s1 = a.tick()
    tr.send("a", "b", "PING", s1)
    tr.receive("b", "a", "PING", b.observe(s1))
    tr.note("b", "log it", b.tick())
    s2 = b.tick()
    tr.send("b", "a", "PONG", s2, reply=True)
    tr.receive("a", "b", "PONG", a.observe(s2))
    tr.send("a", "b", "LOST", a.tick())
    return tr


def test_mermaid_diagram_shows_arrows_notes_stamps_and_unreceived_messages() -> None:
    text = to_mermaid(ping_pong().events, aliases={"a": "Coordinator"}, title="demo")
    assert text.splitlines() == [
        "sequenceDiagram",
        "    title demo",
        "    participant a as Coordinator",
        "    participant b as b",
        "    a->>b: L1 PING (recv L2)",
        "    Note over b: L3 log it",
        "    b-->>a: L4 PONG (recv L5)",
        "    a-xb: L6 LOST (not received)",
    ]


def test_matching_pairs_fifo_and_counts_duplicates() -> None:
    tr = TraceRecorder()
    tr.send("a", "b", "M", 1)
    tr.send("a", "b", "M", 2)
    tr.receive("b", "a", "M", 5)
    tr.receive("b", "a", "M", 6)
    tr.receive("b", "a", "M", 7)  # a duplicate delivery
    arrows, dups = match_messages(lamport_order(tr.events))
    assert [(x.send.lamport, x.receive.lamport if x.receive else None) for x in arrows] == [
        (1, 5), (2, 6)]
    assert dups == 1


def test_a_receive_naming_its_send_stamp_is_matched_exactly() -> None:
    """The first copy was lost and the retransmission arrived: FIFO would guess wrong."""
    tr = TraceRecorder()
    tr.send("a", "b", "M", 1)
    tr.send("a", "b", "M", 2)
    tr.receive("b", "a", "M", 5, ref=2)
    tr.receive("b", "a", "M", 6, ref=2)  # the same copy again: a duplicate
    arrows, dups = match_messages(lamport_order(tr.events))
    assert [x.receive.lamport if x.receive else None for x in arrows] == [None, 5]
    assert dups == 1
    assert "a-xb: L1 M (not received)" in to_mermaid(tr.events)


def test_a_receive_is_never_matched_to_a_later_send() -> None:
    tr = TraceRecorder()
    tr.receive("b", "a", "M", 3)  # e.g. from before a restart of a's trace
    tr.send("a", "b", "M", 4)
    arrows, dups = match_messages(lamport_order(tr.events))
    assert arrows[0].receive is None and dups == 1


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=40))
def test_lamport_order_respects_happened_before(script: list[tuple[int, int]]) -> None:
    """Random message exchanges among 4 nodes: every receive sorts after its send and
    each node's events keep their order."""
    tr = TraceRecorder()
    clocks = [LamportClock() for _ in range(4)]
    for i, (src, dst) in enumerate(script):
        stamp = clocks[src].tick()
        tr.send(f"n{src}", f"n{dst}", f"m{i}", stamp)
        tr.receive(f"n{dst}", f"n{src}", f"m{i}", clocks[dst].observe(stamp))
    ordered = lamport_order(tr.events)
    position = {id(e): i for i, e in enumerate(ordered)}
    sends = {e.label: e for e in tr.events if e.kind is EventKind.SEND}
    for ev in tr.events:
        if ev.kind is EventKind.RECEIVE:
            assert position[id(sends[ev.label])] < position[id(ev)]
    for node in {e.node for e in tr.events}:
        mine = [e.seq for e in ordered if e.node == node]
        assert mine == sorted(mine)


def test_labels_cannot_break_the_diagram() -> None:
    tr = TraceRecorder()
    tr.note("node-1", "a;b#c:d\n<e>", 1)
    text = to_mermaid(tr.events)
    assert "participant node_1 as node-1" in text
    assert "Note over node_1: L1 a,bno.c -d (e)" in text


def test_jsonl_round_trip_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    tr = TraceRecorder(sink=lambda ev: append_jsonl(path, ev))
    tr.send("a", "b", "PING", 1, reply=True)
    tr.note("b", "hi", 4)
    with path.open("a") as f:
        f.write('{"kind": "send", "node"')  # the writer was killed mid-line
    events = read_jsonl(path)
    assert events == tr.events
    assert max_lamport(events, "b") == 4 and max_lamport(events, "zz") == 0
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_message_counts_group_by_the_first_word() -> None:
    tr = ping_pong()
    tr.send("a", "b", "PING again", 9)
    assert message_counts(tr.events) == {"LOST": 1, "PING": 2, "PONG": 1}
    assert TraceEvent.from_json(tr.events[0].to_json()) == tr.events[0]
