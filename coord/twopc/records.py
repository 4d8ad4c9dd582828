"""2PC log records and the effects the cores hand to their drivers.

Log records (what a node writes to its own stable storage):

  coordinator  BeginRecord     before the first PREPARE (forced)
               DecisionRecord  before the first decision message (forced)
               EndRecord       after every ACK (not forced: losing it only
                               makes recovery resend the decision)
  participant  PreparedRecord  undo + redo images, before voting READY (forced,
                               in one transaction with the in-place writes)
               DecisionRecord  the outcome, in one transaction with the undo
                               writes on ABORT; before the ACK, or before
                               answering ABORT to a termination query (forced)

Effects (what a core asks its driver to do, in list order):

  Persist          append a record (+ data writes in the same atomic write);
                   when `sync`, nothing after it runs before it is on disk
  Send             one message to one node
  ResolveDecision  ask the decision store: record `proposal` for the txid unless
                   a decision is recorded; answer with the recorded one
  Checkpoint       a named step: drivers may crash or pause here (tests, CLI)

Invariant: the codec round-trips every record (`decode_record(encode_record(r))
== r`) and rejects anything else with `CorruptRecord`, never a bare exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from coord.twopc.messages import Message
from coord.twopc.types import Decision, NodeName, Step, TxId
from coord.wire.schema import FieldTypeError, codec


@dataclass(frozen=True, slots=True)
class Change:
    """A key's value after (redo) or before (undo) a write; None: the key is absent."""

    key: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class BeginRecord:
    txid: TxId
    participants: tuple[NodeName, ...]


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    txid: TxId
    decision: Decision


@dataclass(frozen=True, slots=True)
class EndRecord:
    txid: TxId


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    txid: TxId
    coordinator: NodeName
    participants: tuple[NodeName, ...]
    undo: tuple[Change, ...]  # values before the transaction (restored on ABORT)
    redo: tuple[Change, ...]  # values the transaction wrote (already in place)


LogRecord = BeginRecord | DecisionRecord | EndRecord | PreparedRecord

# Tags are persisted: add new ones, never renumber.
_TAGS: dict[type, int] = {BeginRecord: 1, DecisionRecord: 2, EndRecord: 3, PreparedRecord: 4}
_BY_TAG: dict[int, type] = {tag: cls for cls, tag in _TAGS.items()}


class CorruptRecord(ValueError):
    """Bytes in a 2PC log that are not a record this version understands."""


def encode_record(record: LogRecord) -> bytes:
    tag = _TAGS[type(record)]
    packed: bytes = msgpack.packb([tag, codec(type(record)).encode(record)], use_bin_type=True)
    return packed


def decode_record(raw: bytes) -> LogRecord:
    try:
        value: Any = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CorruptRecord(f"not msgpack: {exc!r}") from None
    if type(value) is not list or len(value) != 2 or value[0] not in _BY_TAG:
        raise CorruptRecord(f"not a tagged record: {value!r:.80}")
    try:
        record: LogRecord = codec(_BY_TAG[value[0]]).decode(value[1])
    except FieldTypeError as exc:
        raise CorruptRecord(str(exc)) from None
    return record


# ----------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Persist:
    record: LogRecord
    writes: tuple[Change, ...] = ()  # data changes committed atomically with the record
    sync: bool = True  # fsync before any later effect runs


@dataclass(frozen=True, slots=True)
class Send:
    to: NodeName
    msg: Message


@dataclass(frozen=True, slots=True)
class ResolveDecision:
    txid: TxId
    proposal: Decision


@dataclass(frozen=True, slots=True)
class Checkpoint:
    step: Step
    txid: TxId


Effect = Persist | Send | ResolveDecision | Checkpoint


def persist_note(eff: Persist) -> str:
    """A trace note for a log write, e.g. "log DECISION COMMIT t1 (fsync)"."""
    rec = eff.record
    kind = type(rec).__name__.removesuffix("Record").upper()
    decision = f" {rec.decision.name}" if isinstance(rec, DecisionRecord) else ""
    return f"log {kind}{decision} {rec.txid}{' (fsync)' if eff.sync else ''}"
