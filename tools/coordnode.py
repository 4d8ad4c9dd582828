"""What the `ddfs coord run ...` tools share: the node processes they start and
their stand-alone entry point.

Each tool runs its nodes as `python -m tools.coordrun_X node ...`: the node
serves until SIGTERM/SIGINT, after printing one line with its address (the
launcher waits for that line, tools/proclaunch.py).  The same module run
without `node` is the tool itself, with the CLI's error conventions (exit 2
and one line on a usage error, 130 on Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

C = TypeVar("C")
R = TypeVar("R")


def serve_until_signal(serve: Callable[..., Awaitable[Any]], config: C,
                       ready: Callable[[str], str]) -> int:
    """Run `serve(config, task_status=...)` until SIGTERM or SIGINT; print
    `ready(address)` once it is listening."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve, config)
            print(ready(address), flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0


async def interruptible(work: Callable[[], Awaitable[R]]) -> R:
    """`work()`, cancelled by SIGTERM/SIGINT; then KeyboardInterrupt is raised once
    `work` has unwound (so every process it started has been stopped)."""
    result: list[R] = []
    interrupted = False

    async def run_work() -> None:
        result.append(await work())
        nursery.cancel_scope.cancel()

    async def watch_signals() -> None:
        nonlocal interrupted
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                interrupted = True
                nursery.cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        nursery.start_soon(run_work)
    if interrupted or not result:
        raise KeyboardInterrupt
    return result[0]


def standalone(argv: Sequence[str], prog: str,
               add_arguments: Callable[[argparse.ArgumentParser], None],
               run: Callable[[argparse.Namespace], int],
               node_main: Callable[[list[str]], int]) -> int:
    """`python -m tools.coordrun_X [node] ARGS`: a node, or the tool itself."""
    if list(argv[:1]) == ["node"]:
        return node_main(list(argv[1:]))
    from tools.cli import UserError

    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    try:
        return run(parser.parse_args(list(argv)))
    except UserError as exc:
        print(f"ddfs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
