"""The `ddfs` command line.

Every sub-command lives in its own module that exposes
`add_arguments(parser)` and `run(args) -> int`; this file only maps names to
modules.  Sub-command modules keep their top-level imports light (heavy
imports go inside `run`), and a module that fails to import only breaks its
own command, so one broken role cannot stop the others from starting.
Configuration (CLI, TOML, env) is read only under `tools/`; libraries receive
config objects.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# (command path) -> (module, one-line help).  Nested commands use a tuple path.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("bench", "native"): ("tools.bench_native", "checksum and page-diff throughput"),
    ("bench", "rpc"): ("tools.bench_rpc", "RPC round trips and bandwidth vs raw trio echo"),
}


class UserError(Exception):
    """A fatal error caused by the user's input or environment: one line, no traceback."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddfs", description="ddfs distributed file system")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): top
    }
    for path, (module, help_text) in sorted(COMMANDS.items()):
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=f"{prefix[-1]} commands"
                )
                groups[prefix] = group_parser.add_subparsers(
                    dest="_".join(prefix) + "_command", required=True, metavar="COMMAND"
                )
        sub = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        _add_lazy_arguments(sub, module)
    return parser


def _add_lazy_arguments(sub: argparse.ArgumentParser, module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # Reported when (and only when) this command is run.
        sub.set_defaults(_import_error=f"{module}: {exc}")
        return
    mod.add_arguments(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    broken = getattr(args, "_import_error", None)
    if broken is not None:
        print(f"ddfs: this command is unavailable ({broken})", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    try:
        rc: int = mod.run(args)
    except UserError as exc:
        print(f"ddfs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
