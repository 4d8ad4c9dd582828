"""Trace rendering beyond Mermaid: the plain-text timeline, reading every trace
file shape (`parse_events`), and `ddfs trace FILE` on 2PC-, election- and
`--json`-shaped inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coord.election.sim import run_election_sim
from coord.trace import (
    EventKind,
    TraceEvent,
    TraceRecorder,
    append_jsonl,
    parse_events,
    to_mermaid,
    to_text,
)
from tools import cli


def _twopc_like() -> list[TraceEvent]:
    rec = TraceRecorder()
    rec.send("c", "p1", "PREPARE tx1", 1)
    rec.receive("p1", "c", "PREPARE tx1", 2, ref=1)
    rec.note("p1", "log PREPARED tx1", 3)
    rec.send("p1", "c", "READY tx1", 4, reply=True)
    rec.send("c", "p2", "PREPARE tx1", 5)  # never received
    rec.receive("c", "p1", "READY tx1", 6, ref=4)
    return rec.events


def test_text_timeline_lists_every_event_in_lamport_order() -> None:
    text = to_text(_twopc_like(), aliases={"c": "Coordinator"}, title="tx1")
    lines = text.splitlines()
    assert lines[0] == "tx1"
    assert lines[1:] == [
        "L1  Coordinator  -> p1           PREPARE tx1  (received L2)",
        "L2  p1           <- Coordinator  PREPARE tx1  (sent L1)",
        "L3  p1           ** log PREPARED tx1",
        "L4  p1           -> Coordinator  READY tx1  (received L6)",
        "L5  Coordinator  -> p2           PREPARE tx1  (not received)",
        "L6  Coordinator  <- p1           READY tx1  (sent L4)",
    ]


def test_text_timeline_flags_a_duplicate_delivery() -> None:
    rec = TraceRecorder()
    rec.send("a", "b", "X", 1)
    rec.receive("b", "a", "X", 2, ref=1)
    rec.receive("b", "a", "X", 3, ref=1)
    assert to_text(rec.events).splitlines()[-1].endswith("(duplicate)")


def test_parse_events_reads_jsonl_json_lists_and_coordrun_objects() -> None:
    events = _twopc_like()
    jsonl = "".join(json.dumps(e.to_json()) + "\n" for e in events)
    torn = jsonl + '{"kind": "send", "node": "c", "lam'  # a writer killed mid-line
    as_list = json.dumps([e.to_json() for e in events])
    as_object = json.dumps({"outcome": "commit", "trace": [e.to_json() for e in events]})
    for text in (jsonl, torn, as_list, as_object):
        assert parse_events(text) == events
    assert parse_events(json.dumps(events[0].to_json())) == events[:1]  # one-line JSONL
    assert parse_events('{"runs": []}') == []
    assert parse_events("not a trace\n") == []


def test_election_sim_trace_renders_both_ways() -> None:
    report = run_election_sim("ring", 5, trace=True)
    assert report.trace is not None
    events = report.trace.events
    mermaid = to_mermaid(events)
    text = to_text(events)
    sends = sum(1 for e in events if e.kind is EventKind.SEND)
    assert mermaid.count("->>") + mermaid.count("-x") == sends
    assert sum(1 for line in text.splitlines() if "  -> " in line) == sends


def _write_jsonl(path: Path, events: list[TraceEvent]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for e in events:
        append_jsonl(path, e)


def test_ddfs_trace_renders_files_and_folders(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    events = _twopc_like()
    _write_jsonl(tmp_path / "nodes" / "c" / "trace.jsonl", [e for e in events if e.node == "c"])
    _write_jsonl(tmp_path / "nodes" / "p1" / "trace.jsonl",
                 [e for e in events if e.node == "p1"])
    assert cli.main(["trace", str(tmp_path / "nodes")]) == 0
    merged = capsys.readouterr().out
    assert merged.startswith("sequenceDiagram")
    assert "c->>p1: L1 PREPARE tx1 (recv L2)" in merged
    assert "c-xp2: L5 PREPARE tx1 (not received)" in merged
    (tmp_path / "run.json").write_text(json.dumps({"trace": [e.to_json() for e in events]}))
    assert cli.main(["trace", str(tmp_path / "run.json"), "--format", "text",
                     "--match", "READY"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("READY tx1" in line for line in out)


def test_ddfs_trace_errors_are_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trace", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert cli.main(["trace", str(tmp_path / "empty.jsonl")]) == 2
    assert "no trace events" in capsys.readouterr().err
