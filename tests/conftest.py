"""Project-wide pytest options: `--soak` enables long runs (marked `soak`)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run long soak/fuzz tests and larger simulator sweeps",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with --soak (tests scale their sweeps with it)."""
    return bool(request.config.getoption("--soak"))
