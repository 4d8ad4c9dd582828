"""Typed messages: registration, marshalling, and field-type validation."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

import msgpack
import pytest

from coord.wire.schema import (
    FieldTypeError,
    Notification,
    Request,
    RequestSpec,
    Semantics,
    codec,
    notification,
    request,
    spec_of,
)

InodeId = NewType("InodeId", int)


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass(frozen=True, slots=True)
class Inner:
    name: str
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Everything:
    inode: InodeId
    ratio: float
    flag: bool
    blob: bytes
    maybe: int | None
    items: list[int]
    pair: tuple[int, str]
    table: dict[int, str]
    color: Color
    mode: Mode
    inner: Inner
    inners: list[Inner]
    either: int | str = 0
    trailing: str = "default"


@dataclass(frozen=True, slots=True)
class SchemaReply:
    ok: bool


@request("schema.op", semantics=Semantics.AT_MOST_ONCE)
@dataclass(frozen=True, slots=True)
class SchemaOp(Request[SchemaReply]):
    value: int


@notification("schema.note")
@dataclass(frozen=True, slots=True)
class SchemaNote(Notification):
    text: str


def _sample() -> Everything:
    return Everything(
        inode=InodeId(5), ratio=0.5, flag=True, blob=b"\x00\xff", maybe=None,
        items=[1, 2, 3], pair=(7, "x"), table={1: "a", 2: "b"}, color=Color.BLUE,
        mode=Mode.SAFE, inner=Inner("n", ("a", "b")), inners=[Inner("m", ())],
        either="s",
    )


def _wire(value: object) -> object:
    """What the peer would decode: through real msgpack bytes."""
    return msgpack.unpackb(msgpack.packb(value), raw=False, strict_map_key=False)


def test_round_trip_through_msgpack_preserves_every_type() -> None:
    c = codec(Everything)
    original = _sample()
    decoded = c.decode(_wire(c.encode(original)))
    assert decoded == original
    assert type(decoded.color) is Color and type(decoded.mode) is Mode
    assert type(decoded.pair) is tuple and type(decoded.inner.tags) is tuple


def test_bytes_like_values_encode_as_bin() -> None:
    c = codec(SchemaOp)
    assert c.decode(_wire(c.encode(SchemaOp(3)))) == SchemaOp(3)
    blob_codec = codec(Inner)
    raw = msgpack.packb(blob_codec.encode(Inner("x", ())))
    assert isinstance(raw, bytes)
    # memoryview payloads are packed as msgpack bin and come back as bytes
    assert msgpack.unpackb(msgpack.packb([memoryview(b"abc")])) == [b"abc"]


@pytest.mark.parametrize(
    ("index", "bad"),
    [
        (0, "5"),  # int field given a str
        (0, True),  # bool is not an int
        (1, "0.5"),
        (2, 1),  # int is not a bool
        (3, "text"),  # str is not bytes
        (5, [1, "x"]),
        (6, [1]),  # tuple of the wrong length
        (7, {"k": "v"}),  # dict key of the wrong type
        (8, 99),  # not a Color
        (9, "slow"),  # not a Mode
        (10, ["n", "not-a-list"]),
        (12, 1.5),  # neither int nor str
    ],
)
def test_wrong_field_types_raise_field_type_error(index: int, bad: object) -> None:
    c = codec(Everything)
    raw = list(_wire(c.encode(_sample())))  # type: ignore[call-overload]
    raw[index] = bad
    with pytest.raises(FieldTypeError):
        c.decode(raw)


def test_not_an_array_or_too_short_is_rejected() -> None:
    c = codec(Everything)
    with pytest.raises(FieldTypeError):
        c.decode({"inode": 1})
    with pytest.raises(FieldTypeError, match="needs"):
        c.decode([1, 0.5])


def test_missing_trailing_defaults_are_filled_and_extra_values_ignored() -> None:
    c = codec(Everything)
    raw = list(_wire(c.encode(_sample())))  # type: ignore[call-overload]
    shorter = c.decode(raw[:-2])
    assert shorter.either == 0 and shorter.trailing == "default"
    longer = c.decode([*raw, "from a newer peer"])
    assert longer == _sample()


def test_float_field_accepts_integers() -> None:
    c = codec(Everything)
    raw = list(_wire(c.encode(_sample())))  # type: ignore[call-overload]
    raw[1] = 2
    decoded = c.decode(raw)
    assert decoded.ratio == 2.0 and type(decoded.ratio) is float


def test_registry_knows_method_semantics_and_reply_type() -> None:
    spec = spec_of(SchemaOp)
    assert isinstance(spec, RequestSpec)
    assert (spec.method, spec.semantics, spec.reply_type) == (
        "schema.op", Semantics.AT_MOST_ONCE, SchemaReply
    )
    assert spec_of(SchemaNote).method == "schema.note"


def test_registration_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @request("schema.op")
        @dataclass(frozen=True, slots=True)
        class Clash(Request[SchemaReply]):
            x: int

    with pytest.raises(TypeError, match="Request"):

        @request("schema.not_a_request")
        @dataclass(frozen=True, slots=True)
        class Plain:
            x: int

    with pytest.raises(TypeError, match="reply type"):

        @request("schema.bad_reply")
        @dataclass(frozen=True, slots=True)
        class BadReply(Request[int]):
            x: int

    with pytest.raises(TypeError, match="not a registered"):
        spec_of(Inner)


def test_unsupported_field_type_is_reported_at_first_use() -> None:
    @dataclass(frozen=True, slots=True)
    class Weird:
        x: set[int]

    with pytest.raises(TypeError, match="unsupported"):
        codec(Weird)


def test_post_init_validation_errors_become_field_type_errors() -> None:
    c = codec(Checked)
    with pytest.raises(FieldTypeError, match="negative"):
        c.decode([-1])


@dataclass(frozen=True, slots=True)
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")
