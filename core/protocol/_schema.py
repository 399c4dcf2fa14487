"""The machinery under every wire type: field codecs and the :class:`Message` base.

A wire type is a frozen, slotted dataclass deriving from :class:`Message`, with
its ``kind`` named in the class header (it becomes the class attribute ``kind``)
and one :func:`wire` field per body field::

    @dataclass(frozen=True, slots=True)
    class PeerAudit(Message, kind="peer.audit"):
        patient: str = wire(Id())

``to_wire()`` gives the body (a msgpack-ready map); ``from_wire(obj)`` checks
the received body field by field and raises :class:`core.errors.DecodeError`,
naming the kind and the field, for anything that is not exactly what the type
declares (wrong type, missing field, size, range, list length). Keys a type
does not declare are ignored (a newer sender may add fields). A field with a
default may be absent; an :class:`Optional` field may be nil or absent. Instances
built in code are trusted: only received bodies are checked.

Row form: a type declared with ``row=True`` (``class PeerReencrypt(Message,
kind="peer.reencrypt", row=True)``) sends its body as a msgpack array of its
field values in declaration order instead of a map, trailing fields at their
default (or nil) left out: the same values without the field names (a
``peer.reencrypt`` body is 45 bytes shorter). ``from_wire`` of such a type takes
the row or the map form (a sender of the map form still works); items past the
declared fields are ignored as undeclared keys are. Types without ``row=True``
take maps only.

Each codec is a small object with ``decode(value, what)`` and ``encode(value)``
and exposes its bounds as attributes (tests derive hypothesis strategies from
them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Self

from core.errors import DecodeError
from core.identity import check_id

__all__ = [
    "Codec", "Id", "Text", "Bytes", "Int", "Bool", "Choice", "Optional", "ListOf", "Row", "Map", "Nested",
    "Message", "wire", "INT64_MAX", "UINT64_MAX",
]

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
MISSING = dataclasses.MISSING


class Codec:
    """Checks one received value (``decode``) and prepares one value to send (``encode``)."""

    __slots__ = ()

    def decode(self, value: Any, what: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return value


class Id(Codec):
    """An id (:func:`core.identity.check_id`: 1..128 chars of ``[A-Za-z0-9._:@-]``)."""

    __slots__ = ()

    def decode(self, value: Any, what: str) -> str:
        return check_id(value, what)


class Text(Codec):
    """A str of ``min_len..max_len`` characters."""

    __slots__ = ("min_len", "max_len")

    def __init__(self, max_len: int, *, min_len: int = 0):
        self.min_len, self.max_len = min_len, max_len

    def decode(self, value: Any, what: str) -> str:
        if not isinstance(value, str):
            raise DecodeError(f"{what} must be a string, not {_type(value)}")
        _check_length(value, self.min_len, self.max_len, "characters", what)
        return value


class Bytes(Codec):
    """bin of exactly ``size`` bytes, or of ``min_size..max_size`` bytes.

    A bytearray (a large bin the bus handed over without copying it: the received
    frame itself, which only the receiver holds; ``bus.envelope.decode_reply_in_place``)
    is taken as it is where ``mutable`` (bulk data nobody hashes as a key), and
    copied to bytes elsewhere."""

    __slots__ = ("min_size", "max_size", "multiple", "mutable")

    def __init__(self, size: int | None = None, *, max_size: int | None = None, min_size: int = 0,
                 multiple: int = 1, mutable: bool = False):
        if size is not None:
            min_size = max_size = size
        assert max_size is not None
        self.min_size, self.max_size, self.multiple, self.mutable = min_size, max_size, multiple, mutable

    def decode(self, value: Any, what: str) -> bytes:
        if type(value) is bytearray:
            value = value if self.mutable else bytes(value)
        elif not isinstance(value, bytes):
            raise DecodeError(f"{what} must be bytes, not {_type(value)}")
        n = len(value)
        if self.min_size == self.max_size and n != self.min_size:
            raise DecodeError(f"{what} must be {self.min_size} bytes, not {n}")
        if not self.min_size <= n <= self.max_size:
            raise DecodeError(f"{what} must be {self.min_size}..{self.max_size} bytes, not {n}")
        if n % self.multiple:
            raise DecodeError(f"{what} must be a multiple of {self.multiple} bytes, not {n}")
        return value


class Int(Codec):
    """An integer (not a bool) in ``lo..hi``."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo: int = 0, hi: int = INT64_MAX):
        self.lo, self.hi = lo, hi

    def decode(self, value: Any, what: str) -> int:
        if type(value) is not int:
            raise DecodeError(f"{what} must be an integer, not {_type(value)}")
        if not self.lo <= value <= self.hi:
            raise DecodeError(f"{what} must be in {self.lo}..{self.hi}, not {value}")
        return value


class Bool(Codec):
    __slots__ = ()

    def decode(self, value: Any, what: str) -> bool:
        if not isinstance(value, bool):
            raise DecodeError(f"{what} must be a boolean, not {_type(value)}")
        return value


class Choice(Codec):
    """One of a fixed set of strings."""

    __slots__ = ("choices",)

    def __init__(self, choices: tuple[str, ...]):
        self.choices = tuple(choices)

    def decode(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            shown = repr(value[:32]) if isinstance(value, str) else _type(value)
            raise DecodeError(f"{what} must be one of {', '.join(self.choices)}, not {shown}")
        return value


class Optional(Codec):
    """nil, or a value of ``inner``."""

    __slots__ = ("inner",)

    def __init__(self, inner: Codec):
        self.inner = inner

    def decode(self, value: Any, what: str) -> Any:
        return None if value is None else self.inner.decode(value, what)

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)


class ListOf(Codec):
    """A list of ``min_len..max_len`` items of ``item`` (a tuple in Python)."""

    __slots__ = ("item", "min_len", "max_len")

    def __init__(self, item: Codec, *, max_len: int, min_len: int = 0):
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def decode(self, value: Any, what: str) -> tuple:
        if not isinstance(value, list):
            raise DecodeError(f"{what} must be a list, not {_type(value)}")
        _check_length(value, self.min_len, self.max_len, "items", what)
        return tuple(self.item.decode(v, f"{what}[{i}]") for i, v in enumerate(value))

    def encode(self, value: Any) -> list:
        return [self.item.encode(v) for v in value]


class Row(Codec):
    """A fixed-length list whose items have their own codecs (a tuple in Python)."""

    __slots__ = ("items",)

    def __init__(self, *items: Codec):
        self.items = items

    def decode(self, value: Any, what: str) -> tuple:
        if not isinstance(value, list) or len(value) != len(self.items):
            raise DecodeError(f"{what} must be a list of {len(self.items)} items")
        return tuple(c.decode(v, f"{what}[{i}]") for i, (c, v) in enumerate(zip(self.items, value)))

    def encode(self, value: Any) -> list:
        return [c.encode(v) for c, v in zip(self.items, value)]


class Map(Codec):
    """A map with str keys, at most ``max_entries`` of them, whose values are checked
    elsewhere (a certificate, a ledger state entry, an audit entry)."""

    __slots__ = ("max_entries",)

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries

    def decode(self, value: Any, what: str) -> dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{what} must be a map, not {_type(value)}")
        if len(value) > self.max_entries:
            raise DecodeError(f"{what} has more than {self.max_entries} entries")
        if not all(isinstance(k, str) for k in value):
            raise DecodeError(f"{what} must have string keys")
        return value


class Nested(Codec):
    """A map that is itself a :class:`Message` (or any type with ``to_wire``/``from_wire``)."""

    __slots__ = ("type",)

    def __init__(self, type_: type):
        self.type = type_

    def decode(self, value: Any, what: str) -> Any:
        return self.type.from_wire(value, what=what)

    def encode(self, value: Any) -> Any:
        return value.to_wire()


def wire(codec: Codec, *, name: str | None = None, default: Any = MISSING, omit_none: bool = False) -> Any:
    """Declare a body field: its codec, its wire name (default: the attribute's),
    its default when absent, and whether ``to_wire`` leaves it out when it is None.
    (An :class:`Optional` field may always be absent on the wire: it is then None.)"""
    meta = {"codec": codec, "name": name, "omit_none": omit_none}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    name: str
    codec: Codec
    default: Any
    omit_none: bool


@functools.cache
def _fields(cls: type) -> tuple[_Field, ...]:
    out = []
    for f in dataclasses.fields(cls):
        codec = f.metadata.get("codec")
        if codec is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with wire()")
        out.append(_Field(f.name, f.metadata["name"] or f.name, codec, f.default, f.metadata["omit_none"]))
    return tuple(out)


class Message:
    """Base of every wire type (see the module docstring)."""

    __slots__ = ()

    kind: ClassVar[str]
    row: ClassVar[bool] = False
    """The body travels as an array of the field values (see the module docstring)."""

    def __init_subclass__(cls, *, kind: str | None = None, row: bool | None = None, **kwargs: Any) -> None:
        """``class PeerAudit(Message, kind="peer.audit")`` sets ``PeerAudit.kind``; a base
        declared without ``kind=`` (``BlockRange``) leaves it to its subclasses.
        ``row=True``: the body's row form (the module docstring)."""
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
        if row is not None:
            cls.row = row

    def to_wire(self) -> Any:
        if self.row:
            return self._to_row()
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            value = getattr(self, f.attr)
            if value is None and f.omit_none:
                continue
            out[f.name] = f.codec.encode(value)
        return out

    def _to_row(self) -> list[Any]:
        """The row form: the field values in order, the trailing ones at their default left out."""
        fields = _fields(type(self))
        values = [getattr(self, f.attr) for f in fields]
        n = len(values)
        while n and _at_default(fields[n - 1], values[n - 1]):
            n -= 1
        return [f.codec.encode(v) if v is not None else None for f, v in zip(fields[:n], values[:n])]

    @classmethod
    def _from_row(cls, obj: list, what: str) -> dict[str, Any]:
        """A received row as the map of the fields it carries (nil for an Optional field,
        or one whose default is None, counts as absent; items past the fields are ignored)."""
        out: dict[str, Any] = {}
        for f, v in zip(_fields(cls), obj):
            if v is None and (isinstance(f.codec, Optional) or f.default is None):
                continue
            out[f.name] = v
        return out

    @classmethod
    def _body(cls, obj: Any, what: str | None) -> tuple[dict, str]:
        """The check every ``from_wire`` starts with: (``obj``, which must be a map, or for a
        ``row`` type a row, returned as the map of its fields; and the name its errors
        give: ``what``, or the kind)."""
        what = what or cls.kind
        if isinstance(obj, list) and cls.row:
            return cls._from_row(obj, what), what
        if not isinstance(obj, dict):
            raise DecodeError(f"{what}: the body must be a {'row or a ' if cls.row else ''}map, not {_type(obj)}")
        return obj, what

    @classmethod
    def from_wire(cls, obj: Any, *, what: str | None = None) -> Self:
        if type(obj) is list and cls.row:  # the row form, read in place (as _from_row maps it)
            what = what or cls.kind
            values = {}
            n = len(obj)
            for i, f in enumerate(_fields(cls)):
                if i < n:
                    v = obj[i]
                    if v is not None or not (isinstance(f.codec, Optional) or f.default is None):
                        values[f.attr] = f.codec.decode(v, f"{what}: {f.name!r}")
                        continue
                values[f.attr] = _absent(f, what)
            return cls(**values)
        obj, what = cls._body(obj, what)
        values = {}
        for f in _fields(cls):
            if f.name in obj:
                values[f.attr] = f.codec.decode(obj[f.name], f"{what}: {f.name!r}")
            else:
                values[f.attr] = _absent(f, what)
        return cls(**values)


def _absent(f: _Field, what: str) -> Any:
    """The value of a field its body leaves out: its default, None when optional, else refused."""
    if f.default is not MISSING:
        return f.default
    if isinstance(f.codec, Optional):
        return None
    raise DecodeError(f"{what}: field {f.name!r} is missing")


def _at_default(f: _Field, value: Any) -> bool:
    """Whether a row may leave ``value`` of field ``f`` out (the receiver restores it)."""
    if value is None:
        return isinstance(f.codec, Optional) or f.default is None
    return f.default is not MISSING and type(value) is type(f.default) and value == f.default


def _type(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _check_length(value: str | list, min_len: int, max_len: int, unit: str, what: str) -> None:
    """Raise unless ``value`` has ``min_len..max_len`` characters or items (``unit``)."""
    if not min_len <= len(value) <= max_len:
        raise DecodeError(f"{what} must have {min_len}..{max_len} {unit}, not {len(value)}")
