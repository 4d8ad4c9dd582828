"""Results of KV commands, queries and session operations, with their msgpack form.

Results are values: applying the same entry on any replica yields an equal
result, and `decode_result(encode_result(r)) == r` for every result (the
session table stores encoded replies and hands back the decoded copy for a
duplicate, which must be indistinguishable from the first reply).  Tags are
persisted in cached replies: add new ones, never renumber.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from coord.kv.codec import (
    CodecError,
    as_bool,
    as_bytes,
    as_int,
    as_list,
    as_str,
    pack,
    unpack,
)
from coord.kv.types import ClientId, KeyValue, LogTime
from coord.raft.types import LogIndex


class ErrorCode(enum.IntEnum):
    SESSION_EXPIRED = 1  # unknown or expired session: the command was NOT executed
    STALE_SEQUENCE = 2  # seq <= acked: the reply was discarded; not executed again
    TOO_MANY_OUTSTANDING = 3  # reply cache full for this client: not executed, retry later
    BAD_COMMAND = 4  # the entry did not decode: nothing executed


@dataclass(frozen=True, slots=True)
class PutResult:
    revision: LogIndex  # the key's new mod_revision
    version: int  # the key's new version


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: bool  # False: there was no such key


@dataclass(frozen=True, slots=True)
class CasResult:
    succeeded: bool
    kv: KeyValue | None  # the new record on success, the current one (or None) on failure


@dataclass(frozen=True, slots=True)
class GetResult:
    kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    more: bool  # the limit cut the range short


OpResult = PutResult | DeleteResult | GetResult | RangeResult


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool  # all compares held: `then` ran (else `otherwise` ran)
    results: tuple[OpResult, ...]


@dataclass(frozen=True, slots=True)
class RegisterResult:
    client_id: ClientId
    session_ttl_ms: int  # send something at least this often (in log time)


@dataclass(frozen=True, slots=True)
class KeepAliveResult:
    deadline: LogTime  # the session expires at log time > deadline without activity


@dataclass(frozen=True, slots=True)
class SessionEndedResult:
    client_id: ClientId


@dataclass(frozen=True, slots=True)
class ExtResult:
    """An extension command's result, in that extension's own encoding."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ErrorResult:
    code: ErrorCode
    message: str = ""


Result = (
    PutResult
    | DeleteResult
    | CasResult
    | GetResult
    | RangeResult
    | TxnResult
    | RegisterResult
    | KeepAliveResult
    | SessionEndedResult
    | ExtResult
    | ErrorResult
)

_PUT, _DELETE, _CAS, _GET, _RANGE, _TXN, _REGISTER, _KEEPALIVE, _ERROR = range(32, 41)
_ENDED, _EXT = 41, 42


def _kv_to_wire(kv: KeyValue | None) -> list[Any] | None:
    if kv is None:
        return None
    return [kv.key, kv.value, kv.version, kv.create_revision, kv.mod_revision]


def _kv_from_wire(obj: object) -> KeyValue | None:
    if obj is None:
        return None
    key, value, version, create, mod = as_list(obj, "kv", 5)
    return KeyValue(
        as_bytes(key, "key"),
        as_bytes(value, "value"),
        as_int(version, "version", 1),
        LogIndex(as_int(create, "create_revision", 1)),
        LogIndex(as_int(mod, "mod_revision", 1)),
    )


def _to_wire(result: Result) -> list[Any]:
    match result:
        case PutResult(revision, version):
            return [_PUT, revision, version]
        case DeleteResult(deleted):
            return [_DELETE, deleted]
        case CasResult(succeeded, kv):
            return [_CAS, succeeded, _kv_to_wire(kv)]
        case GetResult(kv):
            return [_GET, _kv_to_wire(kv)]
        case RangeResult(kvs, more):
            return [_RANGE, [_kv_to_wire(kv) for kv in kvs], more]
        case TxnResult(succeeded, results):
            return [_TXN, succeeded, [_to_wire(r) for r in results]]
        case RegisterResult(client_id, ttl):
            return [_REGISTER, client_id, ttl]
        case KeepAliveResult(deadline):
            return [_KEEPALIVE, deadline]
        case SessionEndedResult(client_id):
            return [_ENDED, client_id]
        case ExtResult(payload):
            return [_EXT, payload]
        case ErrorResult(code, message):
            return [_ERROR, int(code), message]
    raise TypeError(f"not a KV result: {result!r}")


def _from_wire(obj: object) -> Result:
    fields = as_list(obj, "result")
    tag = as_int(fields[0] if fields else None, "result tag")
    a = fields[1:]
    if tag == _PUT:
        rev, version = as_list(a, "put", 2)
        return PutResult(LogIndex(as_int(rev, "revision", 1)), as_int(version, "version", 1))
    if tag == _DELETE:
        return DeleteResult(as_bool(as_list(a, "delete", 1)[0], "deleted"))
    if tag == _CAS:
        ok, kv = as_list(a, "cas", 2)
        return CasResult(as_bool(ok, "succeeded"), _kv_from_wire(kv))
    if tag == _GET:
        return GetResult(_kv_from_wire(as_list(a, "get", 1)[0]))
    if tag == _RANGE:
        kvs, more = as_list(a, "range", 2)
        items = tuple(_kv_from_wire(kv) for kv in as_list(kvs, "kvs"))
        if any(kv is None for kv in items):
            raise CodecError("range result holds a nil record")
        return RangeResult(tuple(kv for kv in items if kv is not None), as_bool(more, "more"))
    if tag == _TXN:
        ok, results = as_list(a, "txn", 2)
        subs: list[OpResult] = []
        for raw_sub in as_list(results, "results"):
            sub = _from_wire(raw_sub)
            if not isinstance(sub, PutResult | DeleteResult | GetResult | RangeResult):
                raise CodecError("txn result holds a non-operation result")
            subs.append(sub)
        return TxnResult(as_bool(ok, "succeeded"), tuple(subs))
    if tag == _REGISTER:
        cid, ttl = as_list(a, "register", 2)
        return RegisterResult(ClientId(as_int(cid, "client", 1)), as_int(ttl, "ttl", 1))
    if tag == _KEEPALIVE:
        return KeepAliveResult(LogTime(as_int(as_list(a, "keepalive", 1)[0], "deadline")))
    if tag == _ENDED:
        return SessionEndedResult(ClientId(as_int(as_list(a, "ended", 1)[0], "client", 1)))
    if tag == _EXT:
        return ExtResult(as_bytes(as_list(a, "extension result", 1)[0], "payload"))
    if tag == _ERROR:
        code, message = as_list(a, "error", 2)
        return ErrorResult(ErrorCode(as_int(code, "code")), as_str(message, "message"))
    raise CodecError(f"unknown result tag {tag}")


def encode_result(result: Result) -> bytes:
    if type(result) is PutResult:  # nearly every cached reply: skip the match (~1 us)
        return pack([_PUT, result.revision, result.version])
    if type(result) is GetResult:  # nearly every read's answer (the KV service)
        return pack([_GET, _kv_to_wire(result.kv)])
    return pack(_to_wire(result))


def decode_result(raw: bytes) -> Result:
    try:
        return _from_wire(unpack(raw))
    except CodecError:
        raise
    except (ValueError, TypeError) as exc:  # enum lookups
        raise CodecError(f"bad result: {exc}") from exc
