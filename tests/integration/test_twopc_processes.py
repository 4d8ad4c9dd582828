"""2PC across real processes on 127.0.0.1 (`ddfs coord run 2pc`'s machinery):
a 3-member `ddfs meta` cluster holds the decision record; a coordinator and
three participants each run in their own process with their own LMDB log.

The acceptance matrix: the coordinator killed (SIGSTOP at the step, then
SIGKILL, then restarted from its log) at each of its steps, and a participant
at each of its steps — all in one cluster, one transaction each.  After every
one, every participant decided the same as the coordinator and the Raft
record, and none is left prepared.  Then the chapter's blocking case with real
processes: the coordinator killed before sending its decision and left down;
with the Raft record the participants finish anyway, without it they block
until it comes back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from tools.coordrun import COORD_STEPS, PART_STEPS, Kill, open_cluster, run_matrix

# With every participant voting READY, what the coordinator's crash point implies.
COORD_OUTCOME = {
    "before-prepare": "abort",
    "after-prepare-sent": "abort",  # the votes go to a dead process
    "before-decision-recorded": "abort",  # recovery proposes ABORT, the record is empty
    "before-decision-logged": "commit",  # the Raft record already says COMMIT
    "after-decision-logged": "commit",
    "after-decision-sent": "commit",
    "before-end": "commit",
}


def _explain(run: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in run.items() if k not in ("trace",)}, indent=1)


def _check_consistent(run: dict[str, Any]) -> None:
    assert run["participants_agree"], _explain(run)
    assert run["left_prepared"] == 0, _explain(run)
    assert run["ok"], _explain(run)  # also: the coordinator and the Raft record agree
    assert set(run["participants"].values()) == {run["outcome"]}, _explain(run)


async def test_every_kill_step_of_both_roles_ends_consistent(tmp_path: Path) -> None:
    with trio.fail_after(150):
        async with open_cluster(tmp_path, 3) as cluster:
            result = await run_matrix(cluster, timeout=30)
            runs = result["runs"]
            assert [r["kill"]["step"] for r in runs] == COORD_STEPS + PART_STEPS
            for run in runs:
                assert run["kill"]["reached"], _explain(run)
                _check_consistent(run)
                if run["kill"]["role"] == "coordinator":
                    assert run["outcome"] == COORD_OUTCOME[run["kill"]["step"]], _explain(run)
                # Killed before PREPARE: nothing but the ABORT (and its ACKs) is sent.
                prepares = 0 if run["kill"]["step"] == "before-prepare" else 3
                assert run["messages"].get("PREPARE", 0) >= prepares, _explain(run)
                assert "sequenceDiagram" in run["mermaid"] and "CRASH at" in run["mermaid"]
                # Killed while stopped at the step: it never ran past it.
                assert "resumed after" not in run["mermaid"], _explain(run)
            assert result["all_agree"] and result["max_left_prepared"] == 0

            # A participant refuses: everybody aborts, and its data never changes.
            refused = await cluster.transaction("refused", None, vote_abort="p2", timeout=30)
            _check_consistent(refused)
            assert refused["outcome"] == "abort" and refused["messages"]["VOTE-ABORT"] == 1

            # The coordinator dies before sending COMMIT and stays down: the
            # participants learn COMMIT from the Raft record and finish.
            dead = Kill("coordinator", "c", "after-decision-logged", restart=False)
            alone = await cluster.transaction("dead-coordinator", dead, timeout=30)
            assert alone["coordinator"]["state"] == "down", _explain(alone)
            assert "COMMIT" not in alone["messages"], _explain(alone)  # died before sending
            assert alone["left_prepared"] == 0 and alone["participants_agree"], _explain(alone)
            assert alone["outcome"] == "commit" and "QUERY" in alone["messages"]
            await cluster.restart("c")
            _check_consistent(await cluster.settle("dead-coordinator", timeout=30))


async def test_textbook_2pc_blocks_until_the_coordinator_returns(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with open_cluster(tmp_path, 3, use_store=False) as cluster:
            dead = Kill("coordinator", "c", "after-decision-logged", restart=False)
            blocked = await cluster.transaction("blocked", dead, timeout=6)
            # Cooperative termination ran (every participant asked every other one)
            # and could not decide: all three are still prepared.
            assert blocked["left_prepared"] == 3, _explain(blocked)
            assert set(blocked["participants"].values()) == {None}
            assert blocked["messages"]["QUERY"] >= 9 and blocked["messages"]["ANSWER"] >= 6
            assert "ANSWER UNCERTAIN" in blocked["mermaid"]
            await cluster.restart("c")
            done = await cluster.settle("blocked", timeout=30)
            _check_consistent(done)
            assert done["outcome"] == "commit"  # it was logged before the crash


def test_the_command_prints_one_json_object(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.coordrun", "--participants", "2", "--kill",
         "participant", "--at", "after-prepare-logged", "--victim", "p2", "--json",
         "--keep", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout)
    for key in ("outcome", "participants", "messages", "participants_agree", "left_prepared",
                "trace", "mermaid"):
        assert key in result
    assert result["participants_agree"] and result["left_prepared"] == 0
    assert result["kill"] == {"role": "participant", "node": "p2",
                              "step": "after-prepare-logged", "reached": True}
    assert any(e["label"].startswith("CRASH at after-prepare-logged") for e in result["trace"])
    # The command left no process behind: every process's log ends (they were killed),
    # and no ddfs process from this run is still alive.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(tmp_path / "run") not in ps.stdout
