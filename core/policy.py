"""Patients' attribute-based access-control policies (the paper's ABAC).

A policy says who may do what to which records and when: rules over the
requester's attributes (role, organization, department, specialty, any named
attribute), the object (all records, a label, one record), the operation
(read, write, share, ... or any), a UTC time window (validity period, hours of
day, days of week), an optional purpose, and whether the patient must approve
each request or approval is automatic.

    >>> p = parse('''
    ... policy "cardiology" version 1
    ... default deny
    ... rule cardio-read:
    ...   allow read on label "cardiology"
    ...   when role == "doctor" and department in ["cardiology", "emergency"]
    ...   approval auto
    ... ''')
    >>> d = p.evaluate(Request({"role": "doctor", "department": "cardiology"},
    ...                        "read", "rec-1", "cardiology", time=1767225600))
    >>> (d.effect, d.approval, d.rule)
    ('allow', 'auto', 'cardio-read')

Combining: a matching deny rule overrides every allow rule; otherwise the first
matching allow rule (in policy order) decides; otherwise the default. The
evaluation is a pure function of the policy and the request: time comes in the
request, as integer Unix seconds (UTC).

Layout: the model (``_policy_model``: values, checks, evaluation) is at the
bottom; the text language (``_policy_text``) and the msgpack form
(``_policy_codec``) import it; this module ties both forms to :class:`Policy`.
Nothing imports back up.

Forms: ``parse(text)`` / ``Policy.to_text()`` (the language, docs/policy.md),
``Policy.to_msgpack()`` / ``Policy.from_msgpack(bytes)`` (canonical bytes for
the ledger). Bad text raises :class:`PolicySyntaxError` (a ``PolicyError``,
itself a ``ValueError``) with line, column and a caret excerpt; bad bytes raise
``DecodeError``.
"""

from __future__ import annotations

from ._policy_model import (
    ANY_OPERATION as ANY_OPERATION,
    DAY_NAMES as DAY_NAMES,
    DEFAULT_RULE as DEFAULT_RULE,
    INT_MAX as INT_MAX,
    INT_MIN as INT_MIN,
    MAX_CONDITION_NODES as MAX_CONDITION_NODES,
    MAX_DEPTH as MAX_DEPTH,
    MAX_LIST as MAX_LIST,
    MAX_MSGPACK_BYTES as MAX_MSGPACK_BYTES,
    MAX_NAME as MAX_NAME,
    MAX_RULES as MAX_RULES,
    MAX_STRING as MAX_STRING,
    MAX_TEXT_CHARS as MAX_TEXT_CHARS,
    And as And,
    Compare as Compare,
    Condition as Condition,
    Decision as Decision,
    Emergency as Emergency,
    Has as Has,
    Member as Member,
    Not as Not,
    ObjectSpec as ObjectSpec,
    BasePolicy,
    Or as Or,
    Request as Request,
    Rule as Rule,
    TimeWindow as TimeWindow,
    Value as Value,
    weekday as weekday,
)
from ._policy_codec import decode_policy, encode_policy
from ._policy_text import (
    PolicySyntaxError as PolicySyntaxError,
    format_condition as format_condition,
)
from ._policy_text import format_policy, parse_policy
from .errors import DecodeError as DecodeError, PolicyError as PolicyError


class Policy(BasePolicy):
    """A patient's policy (see :class:`~core._policy_model.BasePolicy` for the
    fields, checks and :meth:`evaluate`), with its text and msgpack forms."""

    __slots__ = ()

    def to_text(self) -> str:
        """The policy in the text language; ``parse(p.to_text()) == p``."""
        return format_policy(self)

    def to_msgpack(self) -> bytes:
        """The canonical msgpack encoding: equal policies give equal bytes."""
        return encode_policy(self)

    @classmethod
    def from_msgpack(cls, data: bytes) -> "Policy":
        """Decode and validate a canonical encoding; DecodeError on anything else."""
        return decode_policy(data, cls)

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """Parse the text language; PolicySyntaxError (a PolicyError) on bad text."""
        return parse_policy(text, cls)


def parse(text: str) -> Policy:
    """Parse a policy written in the text language (docs/policy.md).

    Raises PolicySyntaxError (a PolicyError, a ValueError) pointing at the
    offending line and column, with what was expected there.
    """
    return Policy.parse(text)
