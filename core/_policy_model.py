"""The policy data model, its validation and its evaluation.

Every class here is a frozen, slotted dataclass that checks itself at
construction, so a value that exists is a valid policy: the parser, the msgpack
decoder and hand-built policies all go through the same checks.

This module is the bottom of the policy engine and imports neither form: the
text language (``_policy_text``) and the msgpack form (``_policy_codec``)
import the model, and :mod:`core.policy` ties them to its ``Policy`` (a
:class:`BasePolicy` with ``parse``/``to_text``/``to_msgpack``/``from_msgpack``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Union

from .errors import PolicyError

# ---------------------------------------------------------------------------
# Limits. Policies arrive over the network: every size is bounded.

MAX_TEXT_CHARS = 65_536  #: longest policy text, in characters
MAX_MSGPACK_BYTES = 262_144  #: longest msgpack encoding accepted by ``from_msgpack``
MAX_RULES = 256  #: rules per policy
MAX_DEPTH = 16  #: nesting depth of a condition (and/or/not levels)
MAX_CONDITION_NODES = 256  #: nodes in one rule's condition
MAX_LIST = 64  #: items in a value list, operation list, object list or purpose list
MAX_STRING = 256  #: characters in a string literal
MAX_NAME = 64  #: characters in a name (rule id, attribute, operation)
INT_MIN = -(2**63)  #: smallest integer literal
INT_MAX = 2**63 - 1  #: largest integer literal
TIME_MIN = 0  #: 1970-01-01T00:00:00Z
TIME_MAX = 253_402_300_799  #: 9999-12-31T23:59:59Z

#: A name: letters, digits, ``_``, and single inner hyphens (``cardio-read``).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*")

#: Words that cannot be attribute names (they would read as operators).
RESERVED_ATTRIBUTES = frozenset({"and", "or", "not", "in", "has", "true", "false"})
#: Words that cannot be operation names.
RESERVED_OPERATIONS = frozenset({"on", "all", "label", "record"})

ANY_OPERATION = "any"
DEFAULT_RULE = "default"
EFFECTS = ("allow", "deny")
APPROVALS = ("auto", "patient")
OBJECT_KINDS = ("all", "label", "record")
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Value = Union[str, int, bool]


# ---------------------------------------------------------------------------
# Checks shared by the constructors.


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str):
        raise PolicyError(f"{what} must be a string, got {type(name).__name__}")
    if len(name) > MAX_NAME:
        raise PolicyError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME}")
    if not NAME_RE.fullmatch(name):
        raise PolicyError(
            f"{what} {name!r} is not a valid name (letters, digits, '_' and inner '-', not starting with a digit)"
        )


def _check_string(what: str, s: object) -> None:
    if not isinstance(s, str):
        raise PolicyError(f"{what} must be a string, got {type(s).__name__}")
    if len(s) > MAX_STRING:
        raise PolicyError(f"{what} is {len(s)} characters long; the limit is {MAX_STRING}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise PolicyError(f"{what} is not valid Unicode (it contains a lone surrogate)") from None


def _check_value(what: str, v: object) -> None:
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        if not INT_MIN <= v <= INT_MAX:
            raise PolicyError(f"{what} {v} is outside the 64-bit signed integer range")
        return
    if isinstance(v, str):
        _check_string(what, v)
        return
    raise PolicyError(f"{what} must be a string, integer or boolean, got {type(v).__name__}")


def _check_tuple(what: str, items: object, *, allow_empty: bool = False) -> None:
    if not isinstance(items, tuple):
        raise PolicyError(f"{what} must be a tuple, got {type(items).__name__}")
    if not items and not allow_empty:
        raise PolicyError(f"{what} must not be empty")
    if len(items) > MAX_LIST:
        raise PolicyError(f"{what} has {len(items)} items; the limit is {MAX_LIST}")


def _typed(v: Value) -> tuple[str, Value]:
    """A key under which 1, True and "1" are three different values."""
    return (type(v).__name__, v)


def _check_time(what: str, t: object) -> None:
    if not isinstance(t, int) or isinstance(t, bool):
        raise PolicyError(f"{what} must be an integer (Unix seconds), got {type(t).__name__}")
    if not TIME_MIN <= t <= TIME_MAX:
        raise PolicyError(f"{what} {t} is outside 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z")


# ---------------------------------------------------------------------------
# Conditions over the requester's attributes.


@dataclass(frozen=True, slots=True, eq=False)
class _OnAttribute:
    """Base of the conditions on one requester attribute (``has``, ``==``/``!=``,
    ``in``/``not in``): the attribute's name, checked, and the rule they share: a
    requester without the attribute satisfies none of them (not even ``!=`` or
    ``not in``); with it, :meth:`_holds_for` its value decides."""

    attribute: str

    def __post_init__(self) -> None:
        _check_attribute(self.attribute)

    def holds(self, attributes: Mapping[str, Value]) -> bool:
        if self.attribute not in attributes:
            return False
        return self._holds_for(_typed(attributes[self.attribute]))

    def _holds_for(self, actual: tuple[str, Value]) -> bool:  # pragma: no cover - abstract
        """Whether the requester's value of the attribute (:func:`_typed`) satisfies the condition."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Has(_OnAttribute):
    """``has name``: the requester carries the attribute, whatever its value."""

    def _holds_for(self, actual: tuple[str, Value]) -> bool:
        return True


class _TypedEquality:
    """Equality and hash by ``_key()``, in which the condition's values are :func:`_typed`
    (so ``1``, ``true`` and ``"1"`` make different conditions)."""

    __slots__ = ()

    def _key(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._key()))


@dataclass(frozen=True, slots=True, eq=False)
class Compare(_TypedEquality, _OnAttribute):
    """``name == value`` or ``name != value``. Values compare with their type:
    the string ``"1"``, the integer ``1`` and ``true`` are all different. A
    missing attribute makes either operator false."""

    op: str  # "==" or "!="
    value: Value

    def __post_init__(self) -> None:
        _check_attribute(self.attribute)
        if self.op not in ("==", "!="):
            raise PolicyError(f"comparison operator must be '==' or '!=', got {self.op!r}")
        _check_value("comparison value", self.value)

    def _key(self) -> tuple:
        return (self.attribute, self.op, _typed(self.value))

    def _holds_for(self, actual: tuple[str, Value]) -> bool:
        equal = actual == _typed(self.value)
        return equal if self.op == "==" else not equal


@dataclass(frozen=True, slots=True, eq=False)
class Member(_TypedEquality, _OnAttribute):
    """``name in [v, ...]`` or, with ``negated``, ``name not in [v, ...]``. A
    missing attribute makes either form false."""

    values: tuple[Value, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        _check_attribute(self.attribute)
        _check_tuple("value list", self.values)
        seen = set()
        for v in self.values:
            _check_value("list value", v)
            if _typed(v) in seen:
                raise PolicyError(f"value {v!r} appears twice in the list for {self.attribute!r}")
            seen.add(_typed(v))
        if not isinstance(self.negated, bool):
            raise PolicyError("Member.negated must be a bool")

    def _key(self) -> tuple:
        return (self.attribute, tuple(_typed(v) for v in self.values), self.negated)

    def _holds_for(self, actual: tuple[str, Value]) -> bool:
        return any(actual == _typed(v) for v in self.values) != self.negated


@dataclass(frozen=True, slots=True)
class Not:
    """``not c``."""

    operand: Condition

    def __post_init__(self) -> None:
        _check_condition_type(self.operand)

    def holds(self, attributes: Mapping[str, Value]) -> bool:
        return not self.operand.holds(attributes)


@dataclass(frozen=True, slots=True)
class _Junction:
    """Base of :class:`And` and :class:`Or`: two or more operands joined by ``word``,
    holding when ``combine`` (all or any) of them hold."""

    operands: tuple[Condition, ...]

    word: ClassVar[str]
    combine: ClassVar[Callable[[Iterable[bool]], bool]]

    def __post_init__(self) -> None:
        _check_operands(self.word, self.operands)

    def holds(self, attributes: Mapping[str, Value]) -> bool:
        return self.combine(c.holds(attributes) for c in self.operands)


@dataclass(frozen=True, slots=True)
class And(_Junction):
    """``a and b and ...`` (two or more operands)."""

    word = "and"
    combine = staticmethod(all)


@dataclass(frozen=True, slots=True)
class Or(_Junction):
    """``a or b or ...`` (two or more operands)."""

    word = "or"
    combine = staticmethod(any)


Condition = Union[Has, Compare, Member, Not, And, Or]
CONDITION_TYPES = (Has, Compare, Member, Not, And, Or)


def _check_attribute(name: object) -> None:
    _check_name("attribute name", name)
    if name in RESERVED_ATTRIBUTES:
        raise PolicyError(f"{name!r} is a reserved word and cannot be an attribute name")


def _check_condition_type(c: object) -> None:
    if not isinstance(c, CONDITION_TYPES):
        raise PolicyError(f"a condition must be Has, Compare, Member, Not, And or Or, got {type(c).__name__}")


def _check_operands(op: str, operands: object) -> None:
    if not isinstance(operands, tuple):
        raise PolicyError(f"'{op}' operands must be a tuple")
    if len(operands) < 2:
        raise PolicyError(f"'{op}' needs at least two operands, got {len(operands)}")
    for c in operands:
        _check_condition_type(c)


def _operands(c: Condition) -> tuple[Condition, ...]:
    """The conditions directly under ``c``: one for ``not``, two or more for ``and``/``or``,
    none for a comparison."""
    if isinstance(c, Not):
        return (c.operand,)
    if isinstance(c, _Junction):
        return c.operands
    return ()


def condition_depth(c: Condition) -> int:
    """Nesting depth: 1 for a comparison, one more for each and/or/not around it."""
    return 1 + max((condition_depth(o) for o in _operands(c)), default=0)


def condition_size(c: Condition) -> int:
    """Number of nodes."""
    return 1 + sum(condition_size(o) for o in _operands(c))


def check_condition_limits(c: Condition) -> None:
    """Raise PolicyError when ``c`` is deeper than MAX_DEPTH or larger than MAX_CONDITION_NODES.

    Construction cannot check this (a node does not know how deep it will be
    nested), so Rule does it for its whole condition.
    """
    depth = condition_depth(c)
    if depth > MAX_DEPTH:
        raise PolicyError(f"condition is nested {depth} levels deep; the limit is {MAX_DEPTH}")
    size = condition_size(c)
    if size > MAX_CONDITION_NODES:
        raise PolicyError(f"condition has {size} parts; the limit is {MAX_CONDITION_NODES}")


# ---------------------------------------------------------------------------
# Objects and time.


@dataclass(frozen=True, slots=True)
class ObjectSpec:
    """What a rule covers: ``all`` records, ``label "x"`` or ``record "id"``."""

    kind: str  # "all", "label" or "record"
    value: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECT_KINDS:
            raise PolicyError(f"object kind must be one of {', '.join(OBJECT_KINDS)}; got {self.kind!r}")
        if self.kind == "all":
            if self.value is not None:
                raise PolicyError("object 'all' takes no value")
        else:
            _check_string(f"{self.kind} name", self.value)

    def matches(self, record: str, label: str | None) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "label":
            return label is not None and label == self.value
        return record == self.value


def weekday(t: int) -> int:
    """Day of week of Unix time ``t`` in UTC: 0 = Monday ... 6 = Sunday."""
    return (t // 86400 + 3) % 7  # 1970-01-01 was a Thursday


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """When a rule applies, all in UTC. At least one part is set.

    - ``valid_from`` (inclusive) and ``valid_until`` (exclusive), Unix seconds;
    - ``hours``: (start, end) minutes after midnight, start inclusive, end
      exclusive; ``end`` may be 1440 (24:00); start > end wraps past midnight
      (``22:00-06:00``), and then the hours after midnight belong to the day the
      window opened, for the purpose of ``days``;
    - ``days``: sorted distinct weekdays, 0 = Monday ... 6 = Sunday.
    """

    valid_from: int | None = None
    valid_until: int | None = None
    hours: tuple[int, int] | None = None
    days: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.valid_from is None and self.valid_until is None and self.hours is None and self.days is None:
            raise PolicyError("a time window needs at least one of valid_from, valid_until, hours, days")
        if self.valid_from is not None:
            _check_time("valid_from", self.valid_from)
        if self.valid_until is not None:
            _check_time("valid_until", self.valid_until)
        if self.valid_from is not None and self.valid_until is not None and self.valid_from >= self.valid_until:
            raise PolicyError("the validity period is empty: its start is not before its end")
        if self.hours is not None:
            h = self.hours
            if not (isinstance(h, tuple) and len(h) == 2 and all(type(x) is int for x in h)):
                raise PolicyError("hours must be a pair of integers (minutes after midnight)")
            start, end = h
            if not 0 <= start < 1440:
                raise PolicyError(f"hours start {start} is not in 0..1439 minutes (00:00..23:59)")
            if not 1 <= end <= 1440:
                raise PolicyError(f"hours end {end} is not in 1..1440 minutes (00:01..24:00)")
            if start == end:
                raise PolicyError("hours window is empty (start equals end); leave hours out for the whole day")
        if self.days is not None:
            d = self.days
            if not isinstance(d, tuple) or not d:
                raise PolicyError("days must be a non-empty tuple of weekday numbers")
            if not all(type(x) is int and 0 <= x <= 6 for x in d):
                raise PolicyError("days must be weekday numbers 0 (Monday) .. 6 (Sunday)")
            if list(d) != sorted(set(d)):
                raise PolicyError("days must be sorted and distinct")

    def contains(self, t: int) -> bool:
        return self.miss(t) is None

    def miss(self, t: int) -> str | None:
        """None when ``t`` is inside the window, else why not (for decision reasons)."""
        if self.valid_from is not None and t < self.valid_from:
            return "before the validity period"
        if self.valid_until is not None and t >= self.valid_until:
            return "after the validity period"
        day = weekday(t)
        if self.hours is not None:
            minute = (t % 86400) // 60
            start, end = self.hours
            if start < end:
                if not start <= minute < end:
                    return "outside the allowed hours"
            elif minute >= start:
                pass  # evening part: the window opened today
            elif minute < end:
                day = (day - 1) % 7  # early-morning part: the window opened yesterday
            else:
                return "outside the allowed hours"
        if self.days is not None and day not in self.days:
            return "not on an allowed day"
        return None


# ---------------------------------------------------------------------------
# Rules and policies.


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. ``approval`` is "auto" or "patient" for allow rules, None for deny rules.
    ``condition``, ``window`` and ``purposes`` are None when the rule does not restrict them."""

    id: str
    effect: str
    operations: tuple[str, ...]
    objects: tuple[ObjectSpec, ...]
    condition: Condition | None = None
    window: TimeWindow | None = None
    purposes: tuple[str, ...] | None = None
    approval: str | None = None

    def __post_init__(self) -> None:
        _check_name("rule id", self.id)
        if self.id == DEFAULT_RULE:
            raise PolicyError(f"{DEFAULT_RULE!r} is reserved for the policy's default and cannot be a rule id")
        if self.effect not in EFFECTS:
            raise PolicyError(f"rule effect must be 'allow' or 'deny', got {self.effect!r}")
        _check_tuple("operation list", self.operations)
        for op in self.operations:
            _check_name("operation", op)
            if op in RESERVED_OPERATIONS:
                raise PolicyError(f"{op!r} is a reserved word and cannot be an operation")
        if len(set(self.operations)) != len(self.operations):
            raise PolicyError(f"rule {self.id!r} lists an operation twice")
        if ANY_OPERATION in self.operations and len(self.operations) > 1:
            raise PolicyError(f"rule {self.id!r}: 'any' already covers every operation; list it alone")
        _check_tuple("object list", self.objects)
        for o in self.objects:
            if not isinstance(o, ObjectSpec):
                raise PolicyError(f"objects must be ObjectSpec values, got {type(o).__name__}")
        if len(set(self.objects)) != len(self.objects):
            raise PolicyError(f"rule {self.id!r} lists an object twice")
        if any(o.kind == "all" for o in self.objects) and len(self.objects) > 1:
            raise PolicyError(f"rule {self.id!r}: 'all' already covers every record; list it alone")
        if self.condition is not None:
            _check_condition_type(self.condition)
            check_condition_limits(self.condition)
        if self.window is not None and not isinstance(self.window, TimeWindow):
            raise PolicyError(f"window must be a TimeWindow, got {type(self.window).__name__}")
        if self.purposes is not None:
            _check_tuple("purpose list", self.purposes)
            for p in self.purposes:
                _check_string("purpose", p)
            if len(set(self.purposes)) != len(self.purposes):
                raise PolicyError(f"rule {self.id!r} lists a purpose twice")
        if self.effect == "allow":
            if self.approval not in APPROVALS:
                raise PolicyError(f"allow rule {self.id!r} needs approval 'auto' or 'patient', got {self.approval!r}")
        elif self.approval is not None:
            raise PolicyError(f"deny rule {self.id!r} cannot carry an approval")

    def miss(self, request: Request) -> str | None:
        """None when the rule applies to ``request``, else the first reason it does not."""
        if ANY_OPERATION not in self.operations and request.operation not in self.operations:
            return f"operation {request.operation!r} not covered"
        if not any(o.matches(request.record, request.label) for o in self.objects):
            return "record not covered"
        if self.purposes is not None:
            if request.purpose is None:
                return "no purpose given"
            if request.purpose not in self.purposes:
                return f"purpose {request.purpose!r} not allowed"
        if self.window is not None:
            why = self.window.miss(request.time)
            if why is not None:
                return why
        if self.condition is not None and not self.condition.holds(request.attributes):
            return "requester's attributes do not satisfy the condition"
        return None


@dataclass(frozen=True, slots=True)
class Request:
    """What is asked: who (attributes from the requester's certificate), which
    operation on which record (id and label), when (Unix seconds, UTC) and, if
    given, for what purpose."""

    attributes: Mapping[str, Value]
    operation: str
    record: str
    label: str | None
    time: int
    purpose: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attributes, Mapping):
            raise PolicyError("request attributes must be a mapping")
        attrs = dict(self.attributes)
        for k, v in attrs.items():
            if not isinstance(k, str):
                raise PolicyError("request attribute names must be strings")
            _check_value(f"request attribute {k!r}", v)
        object.__setattr__(self, "attributes", MappingProxyType(attrs))
        if not isinstance(self.operation, str):
            raise PolicyError("request operation must be a string")
        if not isinstance(self.record, str):
            raise PolicyError("request record must be a string")
        if self.label is not None and not isinstance(self.label, str):
            raise PolicyError("request label must be a string or None")
        _check_time("request time", self.time)
        if self.purpose is not None and not isinstance(self.purpose, str):
            raise PolicyError("request purpose must be a string or None")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating a policy on a request.

    ``approval`` is "auto" or "patient" when allowed, None when denied; ``rule``
    is the id of the deciding rule or "default"."""

    effect: str
    approval: str | None
    rule: str
    reason: str
    policy: str
    version: int

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def to_dict(self) -> dict[str, str | int | None]:
        """Plain values for the ledger and the audit trail (msgpack-able, fixed keys)."""
        return {
            "effect": self.effect,
            "approval": self.approval,
            "rule": self.rule,
            "reason": self.reason,
            "policy": self.policy,
            "version": self.version,
        }


_MAX_MISSES_IN_REASON = 8
MAX_EMERGENCY_COSIGN = 16  #: officers an emergency clause may require
MAX_EMERGENCY_WINDOW = 7 * 86400  #: longest emergency access, seconds


@dataclass(frozen=True, slots=True)
class Emergency:
    """The policy's emergency (break-glass) clause: which requester roles may
    invoke it, how many officers of the requester's hospital must co-sign, and
    how long (seconds) the access lasts (docs/policy.md, "Emergency access")."""

    roles: tuple[str, ...]
    cosign: int
    window: int

    def __post_init__(self) -> None:
        _check_tuple("emergency roles", self.roles)
        for r in self.roles:
            _check_string("emergency role", r)
        if len(set(self.roles)) != len(self.roles):
            raise PolicyError("emergency roles must be distinct")
        if type(self.cosign) is not int or not 1 <= self.cosign <= MAX_EMERGENCY_COSIGN:
            raise PolicyError(f"emergency cosign must be 1..{MAX_EMERGENCY_COSIGN}")
        if type(self.window) is not int or not 1 <= self.window <= MAX_EMERGENCY_WINDOW:
            raise PolicyError(f"emergency window must be 1..{MAX_EMERGENCY_WINDOW} seconds")


@dataclass(frozen=True, slots=True)
class BasePolicy:
    """A patient's policy: a name and version, a default, and rules in order.

    ``default_approval`` is "auto" or "patient" when ``default_effect`` is
    "allow", None when it is "deny". This is the value and its evaluation;
    :class:`core.policy.Policy`, the class everyone uses, adds the text and
    msgpack forms."""

    name: str
    version: int
    rules: tuple[Rule, ...] = ()
    default_effect: str = "deny"
    default_approval: str | None = None
    emergency: Emergency | None = None

    def __post_init__(self) -> None:
        _check_string("policy name", self.name)
        if self.emergency is not None and not isinstance(self.emergency, Emergency):
            raise PolicyError("emergency must be an Emergency clause")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or not 0 <= self.version <= INT_MAX:
            raise PolicyError("policy version must be a non-negative 64-bit integer")
        if not isinstance(self.rules, tuple):
            raise PolicyError("rules must be a tuple")
        if len(self.rules) > MAX_RULES:
            raise PolicyError(f"policy has {len(self.rules)} rules; the limit is {MAX_RULES}")
        ids = set()
        for r in self.rules:
            if not isinstance(r, Rule):
                raise PolicyError(f"rules must be Rule values, got {type(r).__name__}")
            if r.id in ids:
                raise PolicyError(f"rule id {r.id!r} is used twice")
            ids.add(r.id)
        if self.default_effect not in EFFECTS:
            raise PolicyError(f"default must be 'allow' or 'deny', got {self.default_effect!r}")
        if self.default_effect == "allow":
            if self.default_approval not in APPROVALS:
                raise PolicyError("'default allow' needs approval 'auto' or 'patient'")
        elif self.default_approval is not None:
            raise PolicyError("'default deny' cannot carry an approval")

    # -- evaluation ----------------------------------------------------------

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def evaluate(self, request: Request) -> Decision:
        """Decide ``request``: deny rules override allow rules; among allow rules
        the first matching one (in policy order) decides; if no rule matches,
        the default decides."""
        if not isinstance(request, Request):
            raise TypeError("evaluate() takes a Request")
        first_allow: Rule | None = None
        misses: list[tuple[str, str]] = []
        for r in self.rules:
            why = r.miss(request)
            if why is not None:
                misses.append((r.id, why))
                continue
            if r.effect == "deny":
                note = " (deny rules override allow rules"
                note += f"; allow rule {first_allow.id!r} also matched)" if first_allow is not None else ")"
                return self._decide(
                    "deny", None, r.id, f"denied by rule {r.id!r}{note}"
                )
            if first_allow is None:
                first_allow = r
        if first_allow is not None:
            r = first_allow
            # Later deny rules were checked above; none matched.
            how = "the patient must approve" if r.approval == "patient" else "approved in advance"
            return self._decide("allow", r.approval, r.id, f"allowed by rule {r.id!r} ({how})")
        if not self.rules:
            lead = "the policy has no rules"
        else:
            shown = "; ".join(f"{rid}: {why}" for rid, why in misses[:_MAX_MISSES_IN_REASON])
            more = len(misses) - _MAX_MISSES_IN_REASON
            lead = f"no rule matched ({shown}{f'; {more} more' if more > 0 else ''})"
        if self.default_effect == "deny":
            return self._decide("deny", None, DEFAULT_RULE, f"{lead}; default deny")
        how = "the patient must approve" if self.default_approval == "patient" else "approved in advance"
        return self._decide("allow", self.default_approval, DEFAULT_RULE, f"{lead}; default allow ({how})")

    def could_allow(self, attributes: Mapping[str, Value], record: str, label: str | None) -> bool:
        """Whether a requester with ``attributes`` could be allowed some operation on
        this record: an allow rule covers the record and its condition holds for these
        attributes (operation, purpose and time window aside), or the default allows.
        Peers use it to decide what a doctor may see of a patient's records."""
        if self.default_effect == "allow":
            return True
        return any(r.effect == "allow" and any(o.matches(record, label) for o in r.objects)
                   and (r.condition is None or r.condition.holds(attributes)) for r in self.rules)

    def _decide(self, effect: str, approval: str | None, rule: str, reason: str) -> Decision:
        return Decision(effect, approval, rule, reason, self.name, self.version)
