"""The one-file cluster configuration (TOML): read, validate, write, and turn into
the command lines of `ddfs meta`, `ddfs chunk` and `ddfs mount`.

    cluster = "ddfs"              # a name, shown by `ddfs status`
    secret_file = "secret"        # relative paths: relative to this file's folder
    replicas = 3                  # the replication factor (status/fsck judge by it)

    [meta.1]                      # one table per metadata member (odd count: 1, 3, 5)
    address = "10.0.0.1:7001"     # host:port it binds and peers/clients use
    data = "/var/lib/ddfs/meta1"  # its data folder, on its own host

    [chunk.1]                     # one table per chunk server
    address = "10.0.0.4:7101"     # host:port clients use (advertised)
    data = "/var/lib/ddfs/chunk1"
    listen = "0.0.0.0:7101"       # optional bind address (default: address)

    [mount]                       # optional defaults for `ddfs mount`
    mountpoint = "/mnt/ddfs"
    mode = "remote"               # remote | cache
    options = []                  # extra -o options
    extra_args = []               # more `ddfs mount` flags, verbatim

    [raft]                        # optional RaftConfig fields for every member
    election_timeout_min = 1.0

docs/operations.md is the reference.  `ddfs cluster up` writes exactly this
format (with relative paths, so a cluster folder can be moved).

Invariants: a loaded `ClusterConfig` is validated (ids are positive ints,
addresses parse, meta count is odd, ids and addresses are unique) and every
path in it is absolute (relative ones resolved against the file's folder);
`dumps(load(F))` reads back to an equal config.  Only `tools/` imports this
module: libraries receive config objects, never TOML.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coord.rpc.transport import parse_tcp_address
from tools.cli import UserError

CONFIG_NAME = "cluster.toml"
MODES = ("remote", "cache")


@dataclass(frozen=True, slots=True)
class MetaMember:
    id: int
    address: str  # host:port: bound by the member, used by peers and clients
    data: Path


@dataclass(frozen=True, slots=True)
class ChunkMember:
    id: int
    address: str  # host:port advertised to the metadata service and clients
    data: Path
    listen: str = ""  # host:port to bind; "" = address

    @property
    def bind(self) -> str:
        return self.listen or self.address


@dataclass(frozen=True, slots=True)
class MountOptions:
    mountpoint: Path | None = None
    mode: str = "remote"
    options: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()  # passed to `ddfs mount` verbatim (e.g. --backend X)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    secret_file: Path
    meta: tuple[MetaMember, ...]
    chunks: tuple[ChunkMember, ...]
    replicas: int = 3
    mount: MountOptions = field(default_factory=MountOptions)
    raft: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file it was read from (None: not written yet)

    def validate(self) -> ClusterConfig:
        if not self.meta or len(self.meta) % 2 == 0:
            raise ValueError(f"{len(self.meta)} metadata members: use an odd number (1, 3, 5)")
        if not self.chunks:
            raise ValueError("at least one chunk server is needed")
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        if self.mount.mode not in MODES:
            raise ValueError(f"mount mode {self.mount.mode!r}: expected one of {MODES}")
        for kind, members in (("meta", self.meta), ("chunk", self.chunks)):
            ids = [m.id for m in members]
            if len(set(ids)) != len(ids) or min(ids) < 1:
                raise ValueError(f"{kind} ids must be distinct positive integers: {ids}")
        addresses = [m.address for m in self.meta] + [c.address for c in self.chunks]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"addresses must be distinct: {addresses}")
        for address in addresses + [c.listen for c in self.chunks if c.listen]:
            parse_tcp_address(address)
        return self

    @property
    def endpoints(self) -> list[str]:
        return [m.address for m in self.meta]

    @property
    def members_arg(self) -> str:
        return ",".join(f"{m.id}={m.address}" for m in self.meta)

    def meta_member(self, ident: int) -> MetaMember:
        for m in self.meta:
            if m.id == ident:
                return m
        raise UserError(f"no [meta.{ident}] in the configuration (ids: "
                        f"{[m.id for m in self.meta]})")

    def chunk_member(self, ident: int) -> ChunkMember:
        for c in self.chunks:
            if c.id == ident:
                return c
        raise UserError(f"no [chunk.{ident}] in the configuration (ids: "
                        f"{[c.id for c in self.chunks]})")


# --- reading ------------------------------------------------------------------------------------


def _path(base: Path, value: object, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a path string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _members(raw: object, kind: str) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(raw, dict):
        raise ValueError(f"[{kind}.N] tables are required")
    out = []
    for key, table in raw.items():
        if not str(key).isdigit() or not isinstance(table, dict):
            raise ValueError(f"[{kind}.{key}]: expected [{kind}.N] with a numeric N")
        if not isinstance(table.get("address"), str):
            raise ValueError(f"[{kind}.{key}]: `address` (host:port) is required")
        out.append((int(key), table))
    return sorted(out, key=lambda item: item[0])


def _mount(base: Path, raw: object) -> MountOptions:
    if raw is None:
        return MountOptions()
    if not isinstance(raw, dict):
        raise ValueError("[mount] must be a table")
    point = raw.get("mountpoint")
    return MountOptions(
        mountpoint=None if point is None else _path(base, point, "mount.mountpoint"),
        mode=str(raw.get("mode", "remote")),
        options=tuple(str(o) for o in raw.get("options", ())),
        extra_args=tuple(str(a) for a in raw.get("extra_args", ())),
    )


def from_dict(raw: Mapping[str, Any], base: Path, path: Path | None = None) -> ClusterConfig:
    """A validated config from parsed TOML; relative paths are resolved against `base`."""
    meta = [MetaMember(i, t["address"], _path(base, t.get("data", f"meta{i}"), f"meta.{i}.data"))
            for i, t in _members(raw.get("meta"), "meta")]
    chunks = [ChunkMember(i, t["address"],
                          _path(base, t.get("data", f"chunk{i}"), f"chunk.{i}.data"),
                          str(t.get("listen", "")))
              for i, t in _members(raw.get("chunk"), "chunk")]
    raft = raw.get("raft", {})
    if not isinstance(raft, dict):
        raise ValueError("[raft] must be a table")
    return ClusterConfig(
        name=str(raw.get("cluster", "ddfs")),
        secret_file=_path(base, raw.get("secret_file", "secret"), "secret_file"),
        meta=tuple(meta), chunks=tuple(chunks), replicas=int(raw.get("replicas", 3)),
        mount=_mount(base, raw.get("mount")), raft=dict(raft), path=path,
    ).validate()


def is_cluster_file(raw: Mapping[str, Any]) -> bool:
    """True for the one-file cluster format (it has [meta.N] tables)."""
    return isinstance(raw.get("meta"), dict)


def load(path: Path) -> ClusterConfig:
    """Read and validate a config file; any problem is a one-line UserError."""
    path = Path(path).resolve()
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return from_dict(tomllib.loads(text), path.parent, path)
    except (tomllib.TOMLDecodeError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: {exc}") from None


def read_secret(config: ClusterConfig) -> bytes:
    """The cluster secret named by `secret_file`."""
    try:
        secret = config.secret_file.read_bytes().strip()
    except OSError as exc:
        raise UserError(f"cannot read the cluster secret from {config.secret_file}: "
                        f"{exc.strerror}") from None
    if not secret:
        raise UserError(f"the cluster secret file {config.secret_file} is empty")
    return secret


# --- writing ------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _rel(p: Path, base: Path) -> str:
    """`p` relative to `base` when it lies inside it (a movable cluster folder)."""
    try:
        return str(p.relative_to(base))
    except ValueError:
        return str(p)


def dumps(config: ClusterConfig, base: Path) -> str:
    """The TOML text of `config`; paths inside `base` are written relative to it."""
    lines = [
        "# ddfs cluster configuration (format: docs/operations.md).",
        "# Read by `ddfs cluster up/down`, `ddfs status`, `ddfs fsck`, and by",
        "# `ddfs meta|chunk|mount --config` on each host.  Ports are kept across restarts.",
        f"cluster = {_toml_value(config.name)}",
        f"secret_file = {_toml_value(_rel(config.secret_file, base))}",
        f"replicas = {config.replicas}",
    ]
    for m in config.meta:
        lines += ["", f"[meta.{m.id}]", f"address = {_toml_value(m.address)}",
                  f"data = {_toml_value(_rel(m.data, base))}"]
    for c in config.chunks:
        lines += ["", f"[chunk.{c.id}]", f"address = {_toml_value(c.address)}",
                  f"data = {_toml_value(_rel(c.data, base))}"]
        if c.listen:
            lines.append(f"listen = {_toml_value(c.listen)}")
    mount = config.mount
    lines += ["", "[mount]"]
    if mount.mountpoint is not None:
        lines.append(f"mountpoint = {_toml_value(_rel(mount.mountpoint, base))}")
    lines += [f"mode = {_toml_value(mount.mode)}", f"options = {_toml_value(mount.options)}",
              f"extra_args = {_toml_value(mount.extra_args)}"]
    if config.raft:
        lines += ["", "[raft]"] + [f"{k} = {_toml_value(v)}" for k, v in config.raft.items()]
    return "\n".join(lines) + "\n"


def save(config: ClusterConfig, path: Path) -> ClusterConfig:
    """Write atomically (a reader never sees half a file); returns the config with `path`."""
    path = Path(path).resolve()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(config, path.parent))
    os.replace(tmp, path)
    return replace(config, path=path)


# --- command lines ------------------------------------------------------------------------------


def ddfs_command(*args: str) -> list[str]:
    """`ddfs ARGS` as run by this interpreter (daemons keep the same environment)."""
    return [sys.executable, "-m", "tools", *args]


def meta_argv(config: ClusterConfig, ident: int) -> list[str]:
    """`ddfs meta --config F --id N`: the member reads the same file (tools/meta.py)."""
    config.meta_member(ident)
    if config.path is None:
        raise UserError("the configuration must be saved before members can read it")
    return ddfs_command("meta", "--config", str(config.path), "--id", str(ident))


def chunk_argv(config: ClusterConfig, ident: int) -> list[str]:
    c = config.chunk_member(ident)
    argv = ["chunk", "--id", str(c.id), "--listen", c.bind, "--data", str(c.data),
            "--meta", ",".join(config.endpoints), "--secret-file", str(config.secret_file)]
    if c.listen:
        argv += ["--advertise", c.address]
    return ddfs_command(*argv)


def mount_argv(config: ClusterConfig, mountpoint: Path, *, foreground: bool) -> list[str]:
    """`ddfs mount --config F` for this cluster (the mount reads --meta, --secret-file
    and the -o options from the file); run as `python -m tools.mount` until `mount`
    is a registered command (the module has its own entry point)."""
    from tools.cli import COMMANDS

    if config.path is None:
        raise UserError("the configuration must be saved before a mount can read it")
    head = ddfs_command("mount") if ("mount",) in COMMANDS else [
        sys.executable, "-m", "tools.mount"]
    argv = [*head, "--config", str(config.path), "--mode", config.mount.mode,
            *config.mount.extra_args]
    if foreground:
        argv.append("--foreground")
    return [*argv, str(mountpoint)]


# --- for `ddfs meta --config F --id N` (tools/meta.py's own key format) -------------------------


def meta_keys(raw: Mapping[str, Any], config_path: Path, ident: int | None) -> dict[str, Any]:
    """Translate a cluster file (already parsed) into the keys `ddfs meta --config` reads
    (id, members, data, secret_file, raft) for member `ident` (from --id)."""
    if ident is None:
        raise UserError("a cluster configuration needs --id N to pick the member")
    try:
        config = from_dict(raw, Path(config_path).resolve().parent, Path(config_path))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{config_path}: {exc}") from None
    m = config.meta_member(ident)
    return {"id": m.id, "members": {str(x.id): x.address for x in config.meta},
            "data": str(m.data), "secret_file": str(config.secret_file),
            "raft": dict(config.raft), "fs": {"replicas": config.replicas},
            "liveness": dict(raw.get("liveness", {}))}


# --- for `ddfs chunk --config F --id N` and `ddfs mount --config F M` ----------------------------


def fill_chunk_args(args: Any) -> None:
    """Fill the `ddfs chunk` options left unset (None/"") from `args.config`, for
    member `args.id`: --listen, --advertise, --data, --meta, --secret-file."""
    config = load(args.config)
    c = config.chunk_member(args.id)
    args.listen = args.listen or c.bind
    args.advertise = args.advertise or (c.address if c.listen else "")
    args.data = args.data or c.data
    args.meta = args.meta or ",".join(config.endpoints)
    args.secret_file = args.secret_file or config.secret_file


def fill_mount_args(args: Any) -> None:
    """Fill the `ddfs mount` options left unset from `args.config`: --meta,
    --secret-file, and the [mount] table's -o options (added to those given)."""
    config = load(args.config)
    args.meta = args.meta or ",".join(config.endpoints)
    args.secret_file = args.secret_file or str(config.secret_file)
    args.options = [*config.mount.options, *args.options]
