"""`ddfs umount MOUNTPOINT`: detach a ddfs mount; its mount process then exits.

Uses `fusermount3 -u` (works for the user who mounted, and for root), or
`umount` where fusermount3 is missing.  `--lazy` detaches even while files
are open (they keep working until closed); without it a busy mount is an
error, as with umount(8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

from tools.cli import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--lazy", "-z", action="store_true",
                        help="detach now, even if busy (open files keep working)")


def run(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    if shutil.which("fusermount3"):
        argv = ["fusermount3", "-u", *(["-z"] if args.lazy else []), mountpoint]
    else:
        argv = ["umount", *(["-l"] if args.lazy else []), mountpoint]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(message[-1] if message else f"{argv[0]} failed ({done.returncode})")
    return 0
