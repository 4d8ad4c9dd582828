"""The text form of KV transactions for `ddfs kv txn` (parsing and printing)."""

from __future__ import annotations

import re
import shlex

from coord.kv.commands import Compare, CompareOp, CompareTarget, Delete, Get, Put, Range, Txn, TxnOp
from coord.kv.results import DeleteResult, GetResult, OpResult, PutResult, RangeResult, TxnResult
from tools.cli import UserError

_COMPARE = re.compile(r"^\s*(value|version|create|mod)\((.+)\)\s*(=|!=|<|>)\s*(.*?)\s*$")
_TARGETS = {"value": CompareTarget.VALUE, "version": CompareTarget.VERSION,
            "create": CompareTarget.CREATE_REVISION, "mod": CompareTarget.MOD_REVISION}
_OPS = {"=": CompareOp.EQ, "!=": CompareOp.NE, "<": CompareOp.LT, ">": CompareOp.GT}


def parse_compare(text: str) -> Compare:
    m = _COMPARE.match(text)
    if m is None:
        raise UserError(f"bad compare {text!r}: expected e.g. 'value(KEY) = VALUE'")
    target, key, op, operand = m.groups()
    value: bytes | int
    if target == "value":
        value = operand.encode()
    elif operand.isdigit():
        value = int(operand)
    else:
        raise UserError(f"bad compare {text!r}: {target} compares with an integer")
    try:
        return Compare(key.encode(), _TARGETS[target], _OPS[op], value)
    except ValueError as exc:
        raise UserError(f"bad compare {text!r}: {exc}") from None


def parse_op(text: str) -> TxnOp:
    words = shlex.split(text)
    try:
        match words:
            case ["put", key, value]:
                return Put(key.encode(), value.encode())
            case ["del", key]:
                return Delete(key.encode())
            case ["get", key]:
                return Get(key.encode())
            case ["range", start]:
                return Range(start.encode())
            case ["range", start, end]:
                return Range(start.encode(), end.encode())
    except ValueError as exc:
        raise UserError(f"bad op {text!r}: {exc}") from None
    raise UserError(f"bad op {text!r}: expected put K V, del K, get K or range S [E]")


def parse_txn(compares: list[str], then: list[str], otherwise: list[str]) -> Txn:
    return Txn(tuple(parse_compare(c) for c in compares), tuple(parse_op(o) for o in then),
               tuple(parse_op(o) for o in otherwise))


def show_op_result(result: OpResult) -> str:
    match result:
        case PutResult(revision, version):
            return f"put: revision {revision}, version {version}"
        case DeleteResult(deleted):
            return f"del: {1 if deleted else 0}"
        case GetResult(kv):
            return "get: (absent)" if kv is None else f"get: {kv.value.decode(errors='replace')}"
        case RangeResult(kvs, more):
            keys = " ".join(kv.key.decode(errors="replace") for kv in kvs)
            return f"range: {keys}{' ...' if more else ''}"


def show_txn_result(result: TxnResult) -> None:
    print("SUCCEEDED" if result.succeeded else "FAILED")
    for r in result.results:
        print(show_op_result(r))
