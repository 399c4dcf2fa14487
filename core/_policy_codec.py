"""The canonical msgpack form of a policy.

Canonical means: maps with a fixed key set per shape, keys sorted by their
UTF-8 bytes; integers in msgpack's shortest form; strings as str (never bin);
absent optional parts as nil; no floats, no extension types. The decoder
accepts exactly what the encoder produces: after checking every shape it
re-encodes and compares, so duplicate keys, long integer forms or a different
key order are rejected. The decoder builds the class it is given (core.policy
passes its ``Policy``), so this module imports only the model.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from ._policy_model import (
    MAX_CONDITION_NODES, MAX_DEPTH, MAX_LIST, MAX_MSGPACK_BYTES, MAX_RULES, And, Compare, Condition, Has, Member,
    Not, ObjectSpec, BasePolicy, Or, Rule, TimeWindow,
)
from ._policy_model import Emergency
from .errors import DecodeError, PolicyError

P = TypeVar("P", bound=BasePolicy)

FORMAT = 1  #: the "format" field of the encoding; bumped on incompatible change


def _m(**fields: Any) -> dict[str, Any]:
    return dict(sorted(fields.items()))


def _cond(c: Condition) -> dict[str, Any]:
    if isinstance(c, Has):
        return _m(op="has", attr=c.attribute)
    if isinstance(c, Compare):
        return _m(op=c.op, attr=c.attribute, value=c.value)
    if isinstance(c, Member):
        return _m(op="not in" if c.negated else "in", attr=c.attribute, values=list(c.values))
    if isinstance(c, Not):
        return _m(op="not", arg=_cond(c.operand))
    assert isinstance(c, (And, Or))
    return _m(op=c.word, args=[_cond(o) for o in c.operands])


def _window(w: TimeWindow) -> dict[str, Any]:
    return _m(
        days=None if w.days is None else list(w.days),
        hours=None if w.hours is None else list(w.hours),
        valid_from=w.valid_from,
        valid_until=w.valid_until,
    )


def _rule(r: Rule) -> dict[str, Any]:
    return _m(
        id=r.id,
        effect=r.effect,
        operations=list(r.operations),
        objects=[_m(kind=o.kind, value=o.value) for o in r.objects],
        when=None if r.condition is None else _cond(r.condition),
        window=None if r.window is None else _window(r.window),
        purposes=None if r.purposes is None else list(r.purposes),
        approval=r.approval,
    )


def _to_obj(p: BasePolicy) -> dict[str, Any]:
    obj = _m(
        kind="policy",
        format=FORMAT,
        name=p.name,
        version=p.version,
        default=_m(effect=p.default_effect, approval=p.default_approval),
        rules=[_rule(r) for r in p.rules],
    )
    if p.emergency is not None:  # absent otherwise: policies without one keep their bytes
        obj["emergency"] = _m(roles=list(p.emergency.roles), cosign=p.emergency.cosign, window=p.emergency.window)
    return obj


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True)


def encode_policy(p: BasePolicy) -> bytes:
    return _pack(_to_obj(p))


# ---------------------------------------------------------------------------
# Decoding: every shape is checked; errors name the path of the bad part.


class _Bad(Exception):
    pass


def _fail(path: str, message: str) -> _Bad:
    return _Bad(f"{path}: {message}")


def _map(path: str, obj: Any, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(path, f"expected a map, got {type(obj).__name__}")
    if set(obj) != keys:
        missing = sorted(keys - set(obj))
        extra = sorted(str(k) for k in set(obj) - keys)
        raise _fail(path, f"wrong fields (missing {missing}, unexpected {extra})")
    return obj


def _str(path: str, obj: Any) -> str:
    if not isinstance(obj, str):
        raise _fail(path, f"expected a string, got {type(obj).__name__}")
    return obj


def _opt_str(path: str, obj: Any) -> str | None:
    return None if obj is None else _str(path, obj)


def _int(path: str, obj: Any) -> int:
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise _fail(path, f"expected an integer, got {type(obj).__name__}")
    return obj


def _opt_int(path: str, obj: Any) -> int | None:
    return None if obj is None else _int(path, obj)


def _list(path: str, obj: Any, limit: int = MAX_LIST) -> list[Any]:
    if not isinstance(obj, list):
        raise _fail(path, f"expected an array, got {type(obj).__name__}")
    if len(obj) > limit:
        raise _fail(path, f"{len(obj)} items; the limit is {limit}")
    return obj


def _value(path: str, obj: Any) -> str | int | bool:
    if isinstance(obj, (str, int)):  # bool is an int
        return obj
    raise _fail(path, f"expected a string, integer or boolean, got {type(obj).__name__}")


_K_LEAF = frozenset({"op", "attr"})
_K_CMP = frozenset({"op", "attr", "value"})
_K_MEMBER = frozenset({"op", "attr", "values"})
_K_NOT = frozenset({"op", "arg"})
_K_JUNCTION = frozenset({"op", "args"})


def _decode_cond(path: str, obj: Any, depth: int, budget: list[int]) -> Condition:
    if depth > MAX_DEPTH:
        raise _fail(path, f"condition nested deeper than {MAX_DEPTH}")
    budget[0] -= 1
    if budget[0] < 0:
        raise _fail(path, f"condition has more than {MAX_CONDITION_NODES} parts")
    if not isinstance(obj, dict):
        raise _fail(path, f"expected a map, got {type(obj).__name__}")
    op = obj.get("op")
    if op == "has":
        m = _map(path, obj, _K_LEAF)
        return Has(_str(f"{path}.attr", m["attr"]))
    if op in ("==", "!="):
        m = _map(path, obj, _K_CMP)
        return Compare(_str(f"{path}.attr", m["attr"]), op, _value(f"{path}.value", m["value"]))
    if op in ("in", "not in"):
        m = _map(path, obj, _K_MEMBER)
        values = _list(f"{path}.values", m["values"])
        return Member(
            _str(f"{path}.attr", m["attr"]),
            tuple(_value(f"{path}.values[{i}]", v) for i, v in enumerate(values)),
            op == "not in",
        )
    if op == "not":
        m = _map(path, obj, _K_NOT)
        return Not(_decode_cond(f"{path}.arg", m["arg"], depth + 1, budget))
    if op in ("and", "or"):
        m = _map(path, obj, _K_JUNCTION)
        args = _list(f"{path}.args", m["args"], MAX_CONDITION_NODES)
        operands = tuple(_decode_cond(f"{path}.args[{i}]", a, depth + 1, budget) for i, a in enumerate(args))
        return And(operands) if op == "and" else Or(operands)
    raise _fail(f"{path}.op", f"unknown condition operator {op!r}")


_K_WINDOW = frozenset({"days", "hours", "valid_from", "valid_until"})


def _decode_window(path: str, obj: Any) -> TimeWindow:
    m = _map(path, obj, _K_WINDOW)
    days = hours = None
    if m["days"] is not None:
        days = tuple(_int(f"{path}.days[{i}]", d) for i, d in enumerate(_list(f"{path}.days", m["days"], 7)))
    if m["hours"] is not None:
        h = _list(f"{path}.hours", m["hours"], 2)
        if len(h) != 2:
            raise _fail(f"{path}.hours", "expected [start, end]")
        hours = (_int(f"{path}.hours[0]", h[0]), _int(f"{path}.hours[1]", h[1]))
    return TimeWindow(
        _opt_int(f"{path}.valid_from", m["valid_from"]), _opt_int(f"{path}.valid_until", m["valid_until"]), hours, days
    )


_K_OBJECT = frozenset({"kind", "value"})
_K_RULE = frozenset({"id", "effect", "operations", "objects", "when", "window", "purposes", "approval"})


def _decode_rule(path: str, obj: Any) -> Rule:
    m = _map(path, obj, _K_RULE)
    objects = []
    for i, o in enumerate(_list(f"{path}.objects", m["objects"])):
        om = _map(f"{path}.objects[{i}]", o, _K_OBJECT)
        objects.append(ObjectSpec(_str(f"{path}.objects[{i}].kind", om["kind"]), _opt_str(f"{path}.objects[{i}].value", om["value"])))
    purposes = None
    if m["purposes"] is not None:
        purposes = tuple(_str(f"{path}.purposes[{i}]", p) for i, p in enumerate(_list(f"{path}.purposes", m["purposes"])))
    return Rule(
        id=_str(f"{path}.id", m["id"]),
        effect=_str(f"{path}.effect", m["effect"]),
        operations=tuple(_str(f"{path}.operations[{i}]", o) for i, o in enumerate(_list(f"{path}.operations", m["operations"]))),
        objects=tuple(objects),
        condition=None if m["when"] is None else _decode_cond(f"{path}.when", m["when"], 1, [MAX_CONDITION_NODES]),
        window=None if m["window"] is None else _decode_window(f"{path}.window", m["window"]),
        purposes=purposes,
        approval=_opt_str(f"{path}.approval", m["approval"]),
    )


_K_POLICY = frozenset({"kind", "format", "name", "version", "default", "rules"})
_K_DEFAULT = frozenset({"effect", "approval"})


_K_EMERGENCY = frozenset({"roles", "cosign", "window"})


def _from_obj(obj: Any, cls: type[P]) -> P:
    emergency = None
    if isinstance(obj, dict) and "emergency" in obj:
        obj = dict(obj)
        e = _map("policy.emergency", obj.pop("emergency"), _K_EMERGENCY)
        roles = _list("policy.emergency.roles", e["roles"], MAX_LIST)
        emergency = Emergency(tuple(_str(f"policy.emergency.roles[{i}]", r) for i, r in enumerate(roles)),
                              _int("policy.emergency.cosign", e["cosign"]),
                              _int("policy.emergency.window", e["window"]))
    m = _map("policy", obj, _K_POLICY)
    if m["kind"] != "policy":
        raise _fail("policy.kind", f"expected 'policy', got {m['kind']!r}")
    if m["format"] != FORMAT or isinstance(m["format"], bool):
        raise _fail("policy.format", f"unsupported format {m['format']!r} (this decoder reads {FORMAT})")
    d = _map("policy.default", m["default"], _K_DEFAULT)
    rules = _list("policy.rules", m["rules"], MAX_RULES)
    return cls(
        name=_str("policy.name", m["name"]),
        version=_int("policy.version", m["version"]),
        rules=tuple(_decode_rule(f"policy.rules[{i}]", r) for i, r in enumerate(rules)),
        default_effect=_str("policy.default.effect", d["effect"]),
        default_approval=_opt_str("policy.default.approval", d["approval"]),
        emergency=emergency,
    )


def decode_policy(data: bytes, cls: type[P]) -> P:
    """Decode and validate a canonical encoding into a ``cls`` (core.policy.Policy)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"policy encoding must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MSGPACK_BYTES:
        raise DecodeError(f"policy encoding is {len(data)} bytes; the limit is {MAX_MSGPACK_BYTES}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            timestamp=0,
            ext_hook=_reject_ext,
        )
    except DecodeError:
        raise
    except Exception as e:  # msgpack raises several types (ValueError, StackError, ExtraData, ...)
        raise DecodeError(f"policy encoding is not valid msgpack: {type(e).__name__}") from None
    try:
        policy = _from_obj(obj, cls)
    except _Bad as e:
        raise DecodeError(f"malformed policy: {e}") from None
    except PolicyError as e:
        raise DecodeError(f"invalid policy: {e}") from None
    if encode_policy(policy) != data:
        raise DecodeError("policy encoding is not canonical (key order, integer width or duplicate keys)")
    return policy


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed in a policy")
