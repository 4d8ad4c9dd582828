"""`ddfs status` rendering of the leader's failure-detector view (tools/status.py)."""

from __future__ import annotations

from typing import Any

from fs.meta.liveness_protocol import LivenessReply, ServerView
from fs.types import ServerId
from tools.status import _detector_rows, render_chunk_servers

GiB = 1 << 30


def _reply() -> LivenessReply:
    return LivenessReply(
        "OK", detector="phi", threshold=8.0, dead_after=15.0, grace_left=0.0, servers=(
            ServerView(ServerId(1), "h:1", "alive", 0.25, 0.04, -1.0, "", True),
            ServerView(ServerId(2), "h:2", "suspected", 3.46, 9.31, 1.0,
                       "phi 9.31 > threshold 8.00 (silent 3.460 s)", True),
            ServerView(ServerId(3), "h:3", "dead", 15.2, 812.0, 12.4,
                       "suspected for 12.4 s, silent 15.2 s >= dead timeout 15.0 s", False),
        ), under_replicated=1, at_risk=2)


def test_detector_rows_carry_state_phi_and_reason() -> None:
    rows, settings = _detector_rows(_reply())
    assert rows[2] == {"state": "suspected", "phi": 9.31, "suspected_for": 1.0,
                       "reason": "phi 9.31 > threshold 8.00 (silent 3.460 s)",
                       "recorded_alive": True}
    assert rows[3]["recorded_alive"] is False
    assert settings == {"name": "phi", "threshold": 8.0, "dead_after": 15.0,
                        "grace_left": 0.0, "at_risk": 2}
    assert _detector_rows("no leader") == ({}, None)  # an older leader, or none


def _status(rows: dict[int, dict[str, Any]], detector: dict[str, Any] | None) -> dict[str, Any]:
    servers = []
    for sid in (1, 2, 3):
        row: dict[str, Any] = {"id": sid, "address": f"h:{sid}", "alive": sid == 1,
                               "silent_for": 0.3, "capacity": 100 * GiB, "used": 0,
                               "free": 50 * GiB, "chunks": 1, **rows.get(sid, {})}
        row.setdefault("state", "alive" if row["alive"] else "unknown")
        servers.append(row)
    return {"chunk_servers": servers, "detector": detector}


def test_the_table_shows_each_state_phi_and_the_reason_underneath() -> None:
    rows, settings = _detector_rows(_reply())
    lines = render_chunk_servers(_status(rows, settings))
    assert lines[0] == ("chunk servers: (detector phi: suspect when phi > 8, dead after 15 s "
                        "of silence)")
    text = "\n".join(lines)
    assert [line.split()[2] for line in lines[2:] if line.split()[0].isdigit()] == [
        "alive", "SUSPECTED", "DEAD"]
    assert "   9.3  0.3s ago" in text and " 812.0 " in text
    assert ("suspected: phi 9.31 > threshold 8.00 (silent 3.460 s) (suspected for 1 s)"
            in text)
    assert "dead: suspected for 12.4 s, silent 15.2 s >= dead timeout 15.0 s" in text
    assert len(lines) == 2 + 3 + 2  # header, column names, three rows, two reasons


def test_without_the_detector_view_the_table_falls_back_to_alive() -> None:
    lines = render_chunk_servers(_status({}, None))
    assert lines[0] == "chunk servers:"
    assert [line.split()[2] for line in lines[2:]] == ["alive", "UNKNOWN", "UNKNOWN"]
    assert all(line.split()[-3] == "-" for line in lines[2:])  # no phi known
