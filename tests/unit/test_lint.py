"""ruff and `mypy --strict` are part of the suite: a lint error fails CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    out = subprocess.run(
        [str(BIN / "ruff"), "check", "--quiet", "."], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_is_clean() -> None:
    out = subprocess.run(
        [str(BIN / "mypy"), "--no-error-summary"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
