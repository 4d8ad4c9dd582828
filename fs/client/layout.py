"""Where bytes go: file ranges cut into chunk spans, data cut into push parts,
and the order in which a chunk's replicas are tried.  Pure functions, no I/O.

Invariants:
* `spans(offset, length)` tiles [offset, offset + length) exactly, in
  order, each span inside one chunk;
* `parts(length, part)` tiles [0, length) exactly with pieces of at most
  `part` bytes (one empty piece for length 0, so empty data is still pushed);
* `order_replicas` returns a permutation of the replicas it is given: those
  on this host first, then the rest in placement order, and replicas that
  failed recently ("suspects") last - it never drops one, because a suspect
  may be the only replica left.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from fs.types import CHUNK_SIZE, ServerId

Replica = tuple[ServerId, str]  # (server id, "host:port")


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes [file_offset, file_offset + length) of a file: chunk `index` at `offset`."""

    index: int
    offset: int  # inside the chunk
    length: int
    file_offset: int


def spans(offset: int, length: int) -> list[Span]:
    out: list[Span] = []
    pos, end = offset, offset + length
    while pos < end:
        index, inner = divmod(pos, CHUNK_SIZE)
        count = min(CHUNK_SIZE - inner, end - pos)
        out.append(Span(index, inner, count, pos))
        pos += count
    return out


def parts(length: int, part: int) -> list[tuple[int, int]]:
    """(offset, size) pieces of at most `part` bytes covering [0, length)."""
    if part < 1:
        raise ValueError("part size must be positive")
    if length == 0:
        return [(0, 0)]
    return [(o, min(part, length - o)) for o in range(0, length, part)]


def host_of(address: str) -> str:
    """The host of "host:port" (IPv6 "[::1]:port" keeps its brackets off)."""
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def order_replicas(
    replicas: Sequence[Replica],
    local_hosts: Collection[str],
    suspects: Collection[str] = (),
) -> list[Replica]:
    """Replicas in the order a reader tries them (see the module docstring)."""

    def rank(item: tuple[int, Replica]) -> tuple[int, int, int]:
        position, (_, address) = item
        return (address in suspects, host_of(address) not in local_hosts, position)

    return [replica for _, replica in sorted(enumerate(replicas), key=rank)]


def push_chain(replicas: Sequence[Replica], local_hosts: Collection[str]) -> list[str]:
    """The addresses data is pushed along: nearest first, then placement order."""
    return [address for _, address in order_replicas(replicas, local_hosts)]
