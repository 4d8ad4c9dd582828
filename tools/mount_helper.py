"""`mount.fuse.ddfs`: the mount(8) helper that makes `mount -t fuse.ddfs` and
/etc/fstab lines work, and `ddfs mount-helper install|uninstall|show`, which
puts it where mount(8) looks for helpers.

    mount -t fuse.ddfs SOURCE MOUNTPOINT [-o OPTIONS]
    # /etc/fstab
    ddfs  /mnt/ddfs  fuse.ddfs  defaults,_netdev,config=/etc/ddfs/cluster.toml  0 0

util-linux's mount runs `/sbin/mount.fuse.ddfs SOURCE MOUNTPOINT [-sfnv]
[-N NS] -o OPTIONS` (it prefers `mount.<type>` over libfuse's generic
`mount.fuse`).  The helper translates SOURCE and OPTIONS into a `ddfs mount`
command line (tools/mount.py) and runs it in this process: the mount is
made, a detached process serves it, and the helper exits 0 only once the
mount answers.  Plain `umount MOUNTPOINT` ends it (the serving process sees
its FUSE session end).  docs/mount-helper.md is the reference.

SOURCE is one of: `host:port[,host:port...]` (metadata endpoints; the secret
from `secret_file=`), a path containing `/` (a cluster file, as `config=`),
`memfs` (an in-memory file system, for tests and demos), or any other word
(a label: `config=` is then required; `ddfs` is the label to use, because
the mount table shows every ddfs mount as `ddfs`, so `mount -a` recognises
the entry as mounted).

Invariants: every option is either translated, passed to the kernel through
libfuse, known to be always on, known to be mount(8)'s own (ignored), or an
error (`-s`, sloppy, turns that error into a warning) - nothing unknown
reaches libfuse; the helper never stacks a second ddfs mount on a mount
point that already has one; exit codes follow mount(8) (1 bad usage, 32
mount failure).  Only `tools/` code runs here; config is read by
tools/clusterconf.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.cli import UserError

HELPER_NAME = "mount.fuse.ddfs"
FSTYPE = "fuse.ddfs"
DEFAULT_DIR = Path("/sbin")  # libmount's first helper folder ("/sbin:/sbin/fs.d:/sbin/fs")
WRAPPER_MARK = "# ddfs mount helper (written by `ddfs mount-helper install`)"

# mount(8) helper exit codes ("RETURN CODES" in mount(8)).
EXIT_USAGE = 1
EXIT_FAILURE = 32

# ddfs options with a value -> the `ddfs mount` flag that takes it, and its type.
VALUED: dict[str, tuple[str, type]] = {
    "config": ("--config", str),
    "secret_file": ("--secret-file", str),
    "mode": ("--mode", str),
    "attr_timeout": ("--attr-timeout", float),
    "entry_timeout": ("--entry-timeout", float),
    "negative_timeout": ("--negative-timeout", float),
    "op_timeout": ("--op-timeout", float),
    "read_ahead_kb": ("--read-ahead-kb", int),
    "log_file": ("--log-file", str),
}
PATH_OPTIONS = ("config", "secret_file", "log_file")  # made absolute (mount's cwd is anywhere)
MODES = ("remote", "cache")
# Passed to the kernel through libfuse (its table of mount flags, libfuse 3.14).
# (nodiratime and [no]symfollow are in its source's table but Debian's 3.14 refuses them.)
KERNEL = frozenset({"ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync",
                    "async", "dirsync"})
# Always set by `ddfs mount` (fs/fuse/config.py), or implied (noatime covers directories);
# accepted and dropped.
ALWAYS = frozenset({"allow_other", "default_permissions", "noatime", "nodiratime"})
# mount(8), fstab and systemd words that mean nothing to the mount itself.
IGNORED = frozenset({"defaults", "auto", "noauto", "user", "nouser", "users", "owner",
                     "group", "_netdev", "nofail", "netdev"})
IGNORED_PREFIXES = ("x-", "comment=")
# Refused with a reason rather than left to libfuse's "unknown option".
REFUSED = {
    "atime": "ddfs mounts are always noatime", "relatime": "ddfs mounts are always noatime",
    "strictatime": "ddfs mounts are always noatime",
    "fsname": "the mount table always names ddfs mounts `ddfs`",
    "subtype": "the type is always fuse.ddfs",
    "max_read": "libfuse 3 refuses it", "max_write": "1 MiB is already negotiated",
}
_ENDPOINT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")

log = logging.getLogger("ddfs.mount_helper")


class HelperUsageError(UserError):
    """The helper was called wrongly (mount(8) exit code 1, not 32)."""


@dataclass(frozen=True, slots=True)
class HelperRequest:
    """The command line mount(8) gave us."""

    source: str
    mountpoint: str
    options: tuple[str, ...]  # split at commas, in order
    fake: bool = False  # -f: check and print, do not mount
    verbose: bool = False  # -v
    sloppy: bool = False  # -s: unknown options are warnings


@dataclass(frozen=True, slots=True)
class MountPlan:
    """What the helper will run: `ddfs mount ARGV`, and what it set aside."""

    argv: tuple[str, ...]
    ignored: tuple[str, ...]  # mount(8)'s own options, and unknown ones under -s


# --- parsing ----------------------------------------------------------------------------------


def split_options(text: str) -> list[str]:
    """Split an -o list at commas; a backslash keeps a comma (or backslash) literal."""
    out, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return [o for o in (s.strip() for s in out) if o]


def parse_helper_argv(argv: Sequence[str]) -> HelperRequest:
    """`SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`, flags anywhere."""
    positional: list[str] = []
    options: list[str] = []
    flags: set[str] = set()
    words = list(argv)
    i = 0
    while i < len(words):  # bounded: every branch advances i
        word = words[i]
        if word in ("-o", "-t", "-N"):
            if i + 1 >= len(words):
                raise HelperUsageError(f"{word} needs a value")
            value = words[i + 1]
            if word == "-o":
                options += split_options(value)
            elif word == "-t" and value != FSTYPE:
                raise HelperUsageError(f"this helper mounts {FSTYPE}, not {value}")
            elif word == "-N":
                raise HelperUsageError("-N (mount namespaces) is not supported")
            i += 2
            continue
        if word.startswith("-o") and len(word) > 2:
            options += split_options(word[2:])
        elif word.startswith("-") and len(word) > 1:
            unknown = set(word[1:]) - set("sfnvi")
            if unknown:
                raise HelperUsageError(f"unknown flag {word}")
            flags |= set(word[1:])
        else:
            positional.append(word)
        i += 1
    if len(positional) != 2:
        raise HelperUsageError(f"usage: {HELPER_NAME} SOURCE MOUNTPOINT [-o OPTIONS]")
    return HelperRequest(positional[0], positional[1], tuple(options),
                         fake="f" in flags, verbose="v" in flags, sloppy="s" in flags)


def source_kind(source: str) -> str:
    """"memfs", "config" (a path), "endpoints" or "label"."""
    if source == "memfs":
        return "memfs"
    if "/" in source:
        return "config"
    parts = source.split(",")
    if all(_ENDPOINT.match(p) for p in parts):
        return "endpoints"
    if any(":" in p for p in parts):
        raise HelperUsageError(f"source {source!r}: endpoints are host:port[,host:port...]")
    return "label"


# --- translation ------------------------------------------------------------------------------


def _value(key: str, raw: str) -> str:
    kind = VALUED[key][1]
    if not raw:
        raise HelperUsageError(f"option {key}= needs a value")
    if kind is str:
        if key in PATH_OPTIONS:
            return os.path.abspath(os.path.expanduser(raw))
        if key == "mode" and raw not in MODES:
            raise HelperUsageError(f"mode={raw}: expected one of {', '.join(MODES)}")
        return raw
    try:
        kind(raw)
    except ValueError:
        raise HelperUsageError(f"option {key}={raw}: not a number") from None
    return raw


def _sort_options(request: HelperRequest) -> tuple[dict[str, str], list[str], list[str]]:
    """(ddfs options, kernel options, ignored) - or an error for anything else."""
    valued: dict[str, str] = {}
    kernel: list[str] = []
    ignored: list[str] = []
    for option in request.options:
        key, eq, raw = option.partition("=")
        if key in VALUED and eq:
            valued[key] = _value(key, raw)  # the last one wins, as with mount(8)
        elif option in KERNEL:
            kernel.append(option)
        elif option in IGNORED or option.startswith(IGNORED_PREFIXES):
            ignored.append(option)
        elif option in ALWAYS:
            continue
        elif request.sloppy:
            log.warning("ignoring unknown option %s (-s)", option)
            ignored.append(option)
        elif key in REFUSED:
            raise HelperUsageError(f"option {key} is not supported: {REFUSED[key]}")
        else:
            raise HelperUsageError(f"unknown option {option!r} (see docs/mount-helper.md)")
    return valued, kernel, ignored


def _config_defaults(config: str) -> list[str]:
    """`[mount]` mode and extra_args of a cluster file (the options that follow override)."""
    from tools import clusterconf

    mount = clusterconf.load(Path(config)).mount
    return [*mount.extra_args, "--mode", mount.mode]


def plan(request: HelperRequest) -> MountPlan:
    """The `ddfs mount` command line for a helper request (no side effects but reading
    the cluster file named by the request, for its `[mount]` table)."""
    valued, kernel, ignored = _sort_options(request)
    kind = source_kind(request.source)
    head: list[str] = []
    if kind == "memfs":
        head = ["--backend", "memfs"]
    elif kind == "endpoints":
        head = ["--meta", request.source]
    elif kind == "config":
        path = os.path.abspath(request.source)
        if "config" in valued and valued["config"] != path:
            raise HelperUsageError(f"source {request.source} and config={valued['config']} "
                                   "name different cluster files")
        valued["config"] = path
    elif "config" not in valued:
        raise HelperUsageError(f"source {request.source!r} is a label: add config=FILE, or "
                               "give host:port,... endpoints or a cluster file path")
    if "config" in valued:
        head = _config_defaults(valued["config"]) + head
    argv = list(head)
    for key in VALUED:  # the table's order: one request, one command line
        if key in valued:
            argv += [VALUED[key][0], valued[key]]
    # mount(8) drops `suid` and `dev` (they are its defaults), and libfuse would add
    # nosuid,nodev: so, like libfuse's own mount.fuse3, ask for them unless refused.
    kernel += [flag for flag in ("suid", "dev") if f"no{flag}" not in kernel]
    argv += ["-o", ",".join(kernel)]
    argv.append(os.path.abspath(request.mountpoint))
    return MountPlan(tuple(argv), tuple(ignored))


# --- mounting ---------------------------------------------------------------------------------


def _check_mountpoint(mountpoint: str) -> None:
    """Refuse to stack a second ddfs mount (what `mount -a` would do again otherwise)."""
    from tools import daemons

    point = os.path.abspath(mountpoint)
    if daemons.mount_points().get(point) != FSTYPE:
        return
    state = daemons.mount_state(Path(point))
    if state is daemons.MountState.DEAD:
        raise UserError(f"{point}: a dead ddfs mount is still there (its process ended): "
                        f"`umount -l {point}` first")
    raise UserError(f"{point}: already mounted ({FSTYPE})")


def mount(request: HelperRequest) -> int:
    """Check, plan and run `ddfs mount`; returns its exit status."""
    from tools import mount as ddfs_mount

    mount_plan = plan(request)
    if request.verbose or request.fake:
        print(f"{HELPER_NAME}: ddfs mount {' '.join(mount_plan.argv)}", file=sys.stderr)
        if mount_plan.ignored:
            print(f"{HELPER_NAME}: ignored: {','.join(mount_plan.ignored)}", file=sys.stderr)
    if request.fake:
        return 0
    _check_mountpoint(request.mountpoint)
    parser = argparse.ArgumentParser(prog="ddfs mount")
    ddfs_mount.add_arguments(parser)
    args = parser.parse_args(list(mount_plan.argv))
    quiet = contextlib.nullcontext() if request.verbose else contextlib.redirect_stdout(
        io.StringIO())  # mount helpers are silent on success; "mounted at M" is for -v
    with quiet:
        return ddfs_mount.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """The `mount.fuse.ddfs` program."""
    words = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING,
                        format=f"{HELPER_NAME}: %(levelname)s %(message)s")
    if words in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        return mount(parse_helper_argv(words))
    except HelperUsageError as exc:
        print(f"{HELPER_NAME}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"{HELPER_NAME}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# --- installing ---------------------------------------------------------------------------------


def console_script() -> Path:
    """Where pip puts the `mount.fuse.ddfs` console script: next to this Python."""
    return Path(sys.executable).parent / HELPER_NAME


def wrapper_text() -> str:
    """A stand-in for the console script: this Python running this module."""
    import tools

    root = Path(tools.__file__).resolve().parent.parent
    return (f"#!/bin/sh\n{WRAPPER_MARK}\n"
            f"PYTHONPATH='{root}'${{PYTHONPATH:+:$PYTHONPATH}} exec '{sys.executable}' "
            f"-m tools.mount_helper \"$@\"\n")


def is_ours(path: Path) -> bool:
    """A symlink to our console script, or a wrapper this module wrote."""
    if path.is_symlink():  # to this or another ddfs install's console script
        return Path(os.readlink(path)).name == HELPER_NAME
    try:
        return WRAPPER_MARK in path.read_text(errors="replace")[:400]
    except OSError:
        return False


def install(directory: Path = DEFAULT_DIR, *, force: bool = False) -> Path:
    """Create DIR/mount.fuse.ddfs: a symlink to the console script if pip installed one,
    else a two-line wrapper.  An existing file that is not ours needs `force`."""
    target = directory / HELPER_NAME
    if (target.exists() or target.is_symlink()) and not (force or is_ours(target)):
        raise UserError(f"{target} exists and was not installed by ddfs (use --force)")
    tmp = directory / f".{HELPER_NAME}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        if console_script().exists():
            tmp.symlink_to(console_script())
        else:
            tmp.write_text(wrapper_text())
            tmp.chmod(0o755)
        os.replace(tmp, target)  # atomic: mount(8) never sees a half-written helper
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"cannot install {target}: {exc.strerror}") from None
    return target


def uninstall(directory: Path = DEFAULT_DIR) -> bool:
    """Remove DIR/mount.fuse.ddfs if we installed it; False if there was none."""
    target = directory / HELPER_NAME
    if not (target.exists() or target.is_symlink()):
        return False
    if not is_ours(target):
        raise UserError(f"{target} was not installed by ddfs: left alone")
    target.unlink()
    return True


def describe(directory: Path) -> Iterable[str]:
    target = directory / HELPER_NAME
    if target.is_symlink():
        yield f"{target} -> {os.readlink(target)}"
    elif target.exists():
        yield f"{target}: {'ddfs wrapper' if is_ours(target) else 'not installed by ddfs'}"
    else:
        yield f"{target}: not installed (`ddfs mount-helper install`)"
    script = console_script()
    yield f"console script {script}: {'present' if script.exists() else 'absent'}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "uninstall", "show"),
                        help="install, remove or show DIR/mount.fuse.ddfs")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help=f"where mount(8) looks for helpers (default {DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true",
                        help="install over a mount.fuse.ddfs that ddfs did not write")


def run(args: argparse.Namespace) -> int:
    """`ddfs mount-helper install|uninstall|show`."""
    if args.action == "install":
        print(f"installed {install(args.dir, force=args.force)}")
    elif args.action == "uninstall":
        print(f"removed {args.dir / HELPER_NAME}" if uninstall(args.dir)
              else f"{args.dir / HELPER_NAME}: not installed")
    else:
        for line in describe(args.dir):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
