"""The `ddfs` command: every registered sub-command imports and has help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools import cli


def test_every_registered_command_builds_its_parser() -> None:
    for path in cli.COMMANDS:  # each --help imports that module and builds its arguments
        with pytest.raises(SystemExit) as exc:
            cli.main([*path, "--help"])
        assert exc.value.code == 0


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools", "--help"], capture_output=True, text=True, check=True
    )
    assert "bench" in out.stdout
