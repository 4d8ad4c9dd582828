"""`ddfs coord run 2pc` argument handling (no processes are started here)."""

from __future__ import annotations

import argparse

import pytest

from tools import cli, coordrun


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    coordrun.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(("argv", "message"), [
    (["--participants", "0"], "1..9"),
    (["--kill", "coordinator"], "go together"),
    (["--kill", "coordinator", "--at", "after-vote"], "--at for a coordinator"),
    (["--kill", "participant", "--at", "before-end"], "--at for a participant"),
    (["--kill", "participant", "--at", "after-vote", "--victim", "p7"], "--victim"),
    (["--kill", "participant", "--at", "after-vote", "--no-restart"], "--no-restart"),
    (["--no-restart"], "--no-restart"),
    (["--matrix", "--kill", "coordinator", "--at", "before-end"], "--matrix"),
    (["--no-store", "--kill", "coordinator", "--at", "before-decision-recorded"], "store"),
    (["--vote-abort", "p9"], "--vote-abort"),
])
def test_bad_combinations_are_user_errors(argv: list[str], message: str) -> None:
    with pytest.raises(cli.UserError, match=message):
        coordrun._check_args(parse(*argv))


def test_a_kill_names_its_victim() -> None:
    assert coordrun._check_args(parse("--kill", "coordinator", "--at", "before-end")) == \
        coordrun.Kill("coordinator", "c", "before-end")
    kill = coordrun._check_args(parse("--participants", "4", "--kill", "participant",
                                      "--at", "after-ack", "--victim", "p4"))
    assert kill == coordrun.Kill("participant", "p4", "after-ack")
    assert coordrun._check_args(parse()) is None


def test_registered_under_coord_run_2pc_it_builds_its_help(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, ("coord", "run", "2pc"),
                        ("tools.coordrun", "two-phase commit across real processes"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["coord", "run", "2pc", "--help"])
    assert exc.value.code == 0
    assert cli.main(["coord", "run", "2pc", "--kill", "coordinator"]) == 2  # a usage error
