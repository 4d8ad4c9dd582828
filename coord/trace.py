"""Lamport-ordered protocol traces, rendered as Mermaid sequence diagrams or text timelines.

Any protocol (2PC now; mutual exclusion, elections, Raft later) records what
each node did as `TraceEvent`s: a message sent, a message received, or a
note (a log write, a crash, a recovery, a decision).  Every event carries the
Lamport time of that event on its node, so sorting all nodes' events by
(Lamport time, node, per-node sequence) gives one total order that respects
happened-before: a receive is always stamped later than its send, and each
node's own events are stamped in increasing order.

The diagram uses the notation of the chapter's figures: one lifeline per
node, an arrow per message labelled with its send stamp (and its receive
stamp, when it arrived), dashed arrows for replies, crossed arrows for
messages never received, and notes over a node for local events.

Invariants:
* `lamport_order` is a linear extension of happened-before for any events
  recorded with per-node Lamport clocks (ties between nodes are broken by
  the actor order, then by the per-node sequence, so the order is stable).
* `match_messages` pairs a receive that names its send's stamp (`ref`, when
  the protocol carries it) with exactly that send; otherwise with the
  earliest unmatched send of the same (sender, receiver, label) stamped
  before it.  A send left unmatched was not received (dropped, its receiver
  crashed first, or still in flight when the trace was taken); a receive
  left unmatched is a duplicate delivery.
* Rendering never fails on odd labels: characters Mermaid treats as syntax
  are replaced.  `to_text` is the plain-text timeline of the same order: one
  line per event, each send naming where (and whether) it was received and
  each receive naming its send.
* Nothing here reads a clock; stamps are given by the caller.  The JSONL
  helpers are the only file I/O, and a torn last line (a writer killed
  mid-line) is skipped, not fatal.
"""

from __future__ import annotations

import enum
import json
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EventKind(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class TraceEvent:
    kind: EventKind
    node: str  # the node the event happened on
    lamport: int  # that node's Lamport time for this event
    label: str  # message label ("PREPARE tx1") or note text
    peer: str = ""  # SEND: the destination; RECEIVE: the source
    reply: bool = False  # SEND: draw as a reply (dashed arrow)
    seq: int = 0  # per-recorder order, a tie-breaker for equal stamps
    ref: int = 0  # RECEIVE: the stamp of its send, when the message carried it (0: unknown)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "node": self.node, "lamport": self.lamport,
                "label": self.label, "peer": self.peer, "reply": self.reply, "seq": self.seq,
                "ref": self.ref}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TraceEvent:
        return cls(EventKind(obj["kind"]), str(obj["node"]), int(obj["lamport"]),
                   str(obj["label"]), str(obj.get("peer", "")), bool(obj.get("reply", False)),
                   int(obj.get("seq", 0)), int(obj.get("ref", 0)))


class TraceRecorder:
    """Collects events (and hands each to `sink`, e.g. a JSONL writer, as it happens)."""

    def __init__(self, sink: Callable[[TraceEvent], None] | None = None) -> None:
        self.events: list[TraceEvent] = []
        self._sink = sink
        self._seq = 0

    def _add(self, event: TraceEvent) -> TraceEvent:
        self.events.append(event)
        if self._sink is not None:
            self._sink(event)
        return event

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, node: str, peer: str, label: str, lamport: int, *,
             reply: bool = False) -> TraceEvent:
        return self._add(TraceEvent(EventKind.SEND, node, lamport, label, peer, reply,
                                    self._next()))

    def receive(self, node: str, peer: str, label: str, lamport: int, *,
                ref: int = 0) -> TraceEvent:
        return self._add(TraceEvent(EventKind.RECEIVE, node, lamport, label, peer,
                                    seq=self._next(), ref=ref))

    def note(self, node: str, text: str, lamport: int) -> TraceEvent:
        return self._add(TraceEvent(EventKind.NOTE, node, lamport, text, seq=self._next()))


# ----------------------------------------------------------------------------- ordering


def actors_of(events: Iterable[TraceEvent]) -> list[str]:
    """Nodes in order of first appearance (as senders, receivers or note owners)."""
    seen: dict[str, None] = {}
    for ev in events:
        seen.setdefault(ev.node, None)
        if ev.peer:
            seen.setdefault(ev.peer, None)
    return list(seen)


def lamport_order(events: Iterable[TraceEvent],
                  actors: Sequence[str] | None = None) -> list[TraceEvent]:
    evs = list(events)
    order = {a: i for i, a in enumerate(actors if actors is not None else actors_of(evs))}
    return sorted(evs, key=lambda e: (e.lamport, order.get(e.node, len(order)), e.node, e.seq))


@dataclass(frozen=True, slots=True)
class MessageArrow:
    send: TraceEvent
    receive: TraceEvent | None  # None: never arrived


def match_messages(ordered: Sequence[TraceEvent]) -> tuple[list[MessageArrow], int]:
    """Pair sends with receives; return (arrows in send order, duplicate receives)."""
    waiting: dict[tuple[str, str, str], deque[int]] = defaultdict(deque)
    exact: dict[tuple[str, str, int], int] = {}  # (sender, receiver, send stamp) -> send
    sends: list[TraceEvent] = []
    received: dict[int, TraceEvent] = {}
    duplicates = 0
    for ev in ordered:
        if ev.kind is EventKind.SEND:
            waiting[(ev.node, ev.peer, ev.label)].append(len(sends))
            exact[(ev.node, ev.peer, ev.lamport)] = len(sends)
            sends.append(ev)
        elif ev.kind is EventKind.RECEIVE:
            found = _find_send(ev, sends, received, waiting, exact)
            if found is None:
                duplicates += 1
            else:
                received[found] = ev
    return [MessageArrow(s, received.get(i)) for i, s in enumerate(sends)], duplicates


def _find_send(ev: TraceEvent, sends: list[TraceEvent], received: dict[int, TraceEvent],
               waiting: dict[tuple[str, str, str], deque[int]],
               exact: dict[tuple[str, str, int], int]) -> int | None:
    if ev.ref:
        i = exact.get((ev.peer, ev.node, ev.ref))
        if i is None or i in received or sends[i].lamport >= ev.lamport:
            return None
        return i
    queue = waiting[(ev.peer, ev.node, ev.label)]
    while queue and queue[0] in received:  # matched exactly by another receive
        queue.popleft()
    # A send stamped at or after the receive cannot be its cause.
    if queue and sends[queue[0]].lamport < ev.lamport:
        return queue.popleft()
    return None


def message_counts(events: Iterable[TraceEvent]) -> dict[str, int]:
    """Messages sent per label kind (the label's first word), e.g. {"PREPARE": 3}."""
    counts: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev.kind is EventKind.SEND:
            counts[ev.label.split(" ", 1)[0]] += 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- rendering

_UNSAFE = str.maketrans({";": ",", "#": "no.", "\n": " ", ":": " -", "%": " pct", "<": "(",
                         ">": ")", "{": "(", "}": ")"})


def _text(label: str) -> str:
    return label.translate(_UNSAFE).strip() or "-"


def _ident(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return safe if safe and not safe[0].isdigit() else f"n_{safe}"


def to_mermaid(events: Iterable[TraceEvent], *, actors: Sequence[str] | None = None,
               aliases: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """A Mermaid `sequenceDiagram` of the events in Lamport order."""
    evs = list(events)
    names = list(actors) if actors is not None else actors_of(evs)
    for extra in actors_of(evs):
        if extra not in names:
            names.append(extra)
    ordered = lamport_order(evs, names)
    arrows, _ = match_messages(ordered)
    by_send = {id(a.send): a for a in arrows}
    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"    title {_text(title)}")
    for name in names:
        alias = (aliases or {}).get(name, name)
        lines.append(f"    participant {_ident(name)} as {_text(alias)}")
    for ev in ordered:
        if ev.kind is EventKind.NOTE:
            lines.append(f"    Note over {_ident(ev.node)}: L{ev.lamport} {_text(ev.label)}")
        elif ev.kind is EventKind.SEND:
            lines.append("    " + _arrow(by_send[id(ev)]))
    return "\n".join(lines) + "\n"


def _arrow(arrow: MessageArrow) -> str:
    s = arrow.send
    src, dst = _ident(s.node), _ident(s.peer)
    if arrow.receive is None:
        head = "--x" if s.reply else "-x"
        return f"{src}{head}{dst}: L{s.lamport} {_text(s.label)} (not received)"
    head = "-->>" if s.reply else "->>"
    return f"{src}{head}{dst}: L{s.lamport} {_text(s.label)} (recv L{arrow.receive.lamport})"


def to_text(events: Iterable[TraceEvent], *, actors: Sequence[str] | None = None,
            aliases: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """A plain-text timeline of the events in Lamport order, one line per event.

        L  12  P1  -> P2   ELECTION r1          (received L15)
        L  15  P2  <- P1   ELECTION r1          (sent L12)
        L  16  P5  ** leader 5
    """
    evs = list(events)
    names = list(actors) if actors is not None else actors_of(evs)
    for extra in actors_of(evs):
        if extra not in names:
            names.append(extra)
    ordered = lamport_order(evs, names)
    arrows, _ = match_messages(ordered)
    recv_of = {id(a.send): a.receive for a in arrows}
    send_of = {id(a.receive): a.send for a in arrows if a.receive is not None}
    show = {n: (aliases or {}).get(n, n) for n in names}
    width = max((len(v) for v in show.values()), default=1)
    stamp_width = len(str(max((e.lamport for e in ordered), default=0)))
    lines = [title] if title else []
    for ev in ordered:
        head = f"L{ev.lamport:>{stamp_width}}  {show.get(ev.node, ev.node):<{width}}"
        lines.append(head + "  " + _text_body(ev, show, width, recv_of, send_of))
    return "\n".join(lines) + "\n"


def _text_body(ev: TraceEvent, show: Mapping[str, str], width: int,
               recv_of: Mapping[int, TraceEvent | None],
               send_of: Mapping[int, TraceEvent]) -> str:
    label = " ".join(ev.label.split())  # one line per event, whatever the label holds
    if ev.kind is EventKind.NOTE:
        return f"** {label}"
    peer = show.get(ev.peer, ev.peer)
    if ev.kind is EventKind.SEND:
        got = recv_of.get(id(ev))
        fate = "not received" if got is None else f"received L{got.lamport}"
        return f"-> {peer:<{width}}  {label}  ({fate})"
    cause = send_of.get(id(ev))
    fate = "duplicate" if cause is None else f"sent L{cause.lamport}"
    return f"<- {peer:<{width}}  {label}  ({fate})"


def parse_events(text: str) -> list[TraceEvent]:
    """Events from a trace file's text: JSONL (one event a line, torn lines skipped),
    a JSON list of events, or a JSON object holding them under "trace" (the
    `--json` output of `ddfs coord run ...`).  Other JSON objects hold none.
    """
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None  # JSONL: the first line alone is an object
        if isinstance(doc, dict) and "kind" not in doc:
            doc = doc.get("trace", [])
        if isinstance(doc, list):
            return [ev for ev in map(_event_or_none, doc) if ev is not None]
    out: list[TraceEvent] = []
    for line in text.splitlines():
        try:
            ev = _event_or_none(json.loads(line))
        except ValueError:
            continue  # a torn line from a writer killed mid-write
        if ev is not None:
            out.append(ev)
    return out


def _event_or_none(obj: object) -> TraceEvent | None:
    if not isinstance(obj, dict):
        return None
    try:
        return TraceEvent.from_json(obj)
    except (ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- files


def append_jsonl(path: Path, event: TraceEvent) -> None:
    """Append one event as a line (one write: a killed writer tears at most that line)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(event.to_json(), separators=(",", ":")) + "\n")


def read_jsonl(path: Path) -> list[TraceEvent]:
    out: list[TraceEvent] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(TraceEvent.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a writer killed mid-write
    return out


def max_lamport(events: Iterable[TraceEvent], node: str) -> int:
    """The highest stamp `node` recorded (0 if none): where a restarted clock resumes."""
    return max((e.lamport for e in events if e.node == node), default=0)
