"""The README's two set-up commands are what .ci/run and users run: keep them honest."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    return [line for line in lines[fences[0] + 1 : fences[1]] if line.strip()]


def test_readme_starts_with_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("./tools/setup.sh && ")
    assert commands[1].startswith("./tools/setup.sh && ")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    out = subprocess.run(
        ["bash", "-c", "awk '/^```/{n++; next} n==1' README.md | sed -n 2p"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == _readme_commands()[1]
    assert "eval \"$cmd\"" in (ROOT / ".ci" / "run").read_text()
