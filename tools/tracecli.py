"""`ddfs trace FILE...`: render recorded protocol traces in Lamport order.

    ddfs trace FILE|DIR [FILE|DIR ...] [--format mermaid|text] [--match WORD]
               [--title TEXT]

A FILE is a node's JSONL trace (`trace.jsonl`, written by the 2PC, election
and mutex nodes), or the JSON printed by `ddfs coord run ... --json` (its
"trace" key), or a JSON list of events.  A DIR stands for every
`trace.jsonl` under it (e.g. a `--keep` folder of `ddfs coord run`), so the
nodes' traces are merged into one diagram.  `--match WORD` keeps the events
whose label holds WORD (a transaction id, a message kind).

Output: a Mermaid `sequenceDiagram` (default) or a plain-text timeline (see
coord/trace.py), on stdout.  Exit status 2 when a file cannot be read or
holds no events.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="trace files (JSONL or JSON) or folders holding trace.jsonl files")
    parser.add_argument("--format", choices=["mermaid", "text"], default="mermaid",
                        help="Mermaid sequence diagram (default) or a plain-text timeline")
    parser.add_argument("--match", metavar="WORD",
                        help="only the events whose label holds WORD")
    parser.add_argument("--title", help="a title line for the diagram")


def trace_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the trace.jsonl files under them."""
    from tools.cli import UserError

    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("trace.jsonl"))
            if not found:
                raise UserError(f"{path}: no trace.jsonl under this folder")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return out


def run(args: argparse.Namespace) -> int:
    from coord.trace import parse_events, to_mermaid, to_text
    from tools.cli import UserError

    events = []
    for path in trace_files(args.files):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UserError(f"{path}: {exc.strerror}") from None
        events += parse_events(text)
    if args.match:
        events = [e for e in events if args.match in e.label]
    if not events:
        raise UserError("no trace events found" + (f" matching {args.match!r}"
                                                   if args.match else ""))
    render = to_mermaid if args.format == "mermaid" else to_text
    print(render(events, title=args.title), end="")
    return 0
