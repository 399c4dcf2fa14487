"""World-state keys and typed read views of the consortium ledger (pure).

:class:`core.ledger.Ledger` keeps its world state as a map from ``str`` keys to
canonical msgpack values. This module is the one place that knows how those
keys are built and split:

==========================================  ===============================  ==========================
key                                         builder                          value (view)
==========================================  ===============================  ==========================
``meta/head``                               :data:`HEAD_KEY`                 ``{height, hash, root}``
``cert/<subject>``                          :func:`cert_key`                 :class:`CertEntry`
``serial/<serial>``                         :func:`serial_key`               the subject (str)
``nonce/<submitter>/<hex nonce>``           :func:`nonce_key`                1
``token/<org>/<hex token id>``              :func:`token_key`                the subject it enrolled (str)
``record/<patient>/<record id>``            :func:`record_key`               :class:`RecordEntry`
``policy/<patient>``                        :func:`policy_key`               :class:`PolicyEntry`
``request/<request id>``                    :func:`request_key`              :class:`RequestEntry`
``grant/<grant id>``                        :func:`grant_key`                :class:`GrantEntry`
``active/<patient>/<doctor>/<grant id>``    :func:`active_key`               the grant's label (str)
``audit/<patient>/<height>/<index>[.<e>]``  :func:`audit_key`                an audit event (map)
``delegation/<delegation id>``              :func:`delegation_key`           :class:`DelegationEntry`
``standing/<patient>/<label>/<epoch>``      :func:`standing_key`             the current delegation id
``revoked/<patient>/<doctor>``              :func:`revoked_key`              the policy version at the revocation
``breakglass/<break-glass id>``             :func:`break_glass_key`          :class:`BreakGlassEntry`
==========================================  ===============================  ==========================

Builders only format: they do not check their arguments, because the ledger
also looks up keys built from unchecked transaction fields (a lookup that finds
nothing). Every key the ledger *writes* is built from ids checked by
:func:`core.identity.check_id`, which never contain ``/``, so :func:`parse_key`
splits a written key back into its parts unambiguously.

Views are frozen dataclasses read from a decoded state value (what
``Ledger.get`` and ``peer.query`` return): ``View.from_state(value)`` checks the
value's shape (a map with exactly the fields the ledger writes, each of the
right type) and raises :class:`~core.errors.DecodeError` otherwise. Their fields
are named as the stored map's keys, and a view's dataclass fields are the one
place its stored shape is written: a field whose default is None may be absent
(read as None; nil when present is refused), every other field must be present,
with the value type its annotation gives (a nested dataclass, a peer-digest
mapping or a tuple is stored as a map or an array, and ``from_state`` checks it
further). They are for reading: the ledger writes plain maps, whose bytes feed
the state root and must not change.

:data:`ENTRY_QUERIES` names the ``peer.query`` forms that read one entry (the
query's ``what`` is the key's kind), and :func:`entry_query` gives the query
that reads a given key (docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, get_args, get_type_hints

from .errors import DecodeError
from .identity import Certificate
from .policy import Decision, Policy
from .tx import Transaction

__all__ = [
    "HEAD_KEY",
    "ENTRY_QUERIES",
    "REQUEST_STATUSES",
    "StateKey",
    "CertEntry",
    "RecordEntry",
    "PolicyEntry",
    "RequestEntry",
    "GrantEntry",
    "DelegationEntry",
    "DELEGATION_MODES",
    "BreakGlassEntry",
    "delegation_key",
    "standing_key",
    "revoked_key",
    "break_glass_key",
    "active_key",
    "active_prefix",
    "audit_key",
    "audit_prefix",
    "cert_key",
    "certs_prefix",
    "entry_key",
    "entry_query",
    "grant_key",
    "nonce_key",
    "parse_key",
    "policy_key",
    "record_key",
    "records_prefix",
    "request_key",
    "serial_key",
    "token_key",
]

# ------------------------------------------------------------------ keys

HEAD_KEY = "meta/head"


def cert_key(subject: str) -> str:
    return f"cert/{subject}"


def certs_prefix() -> str:
    """The prefix of every certificate entry."""
    return "cert/"


def serial_key(serial: str) -> str:
    return f"serial/{serial}"


def nonce_key(submitter: str, nonce: bytes) -> str:
    return f"nonce/{submitter}/{nonce.hex()}"


def token_key(org: str, token_id: bytes) -> str:
    """A spent enrollment token of ``org`` (core.enrollment: single use)."""
    return f"token/{org}/{token_id.hex()}"


def record_key(patient: str, record_id: str) -> str:
    return f"record/{patient}/{record_id}"


def records_prefix(patient: str) -> str:
    """The prefix of every record entry of ``patient``."""
    return f"record/{patient}/"


def policy_key(patient: str) -> str:
    return f"policy/{patient}"


def request_key(request_id: str) -> str:
    return f"request/{request_id}"


def grant_key(grant_id: str) -> str:
    return f"grant/{grant_id}"


def active_key(patient: str, doctor: str, grant_id: str) -> str:
    return f"active/{patient}/{doctor}/{grant_id}"


def active_prefix(patient: str, doctor: str) -> str:
    """The prefix of every unrevoked grant of ``patient`` to ``doctor``."""
    return f"active/{patient}/{doctor}/"


def audit_key(patient: str, height: int, index: int, entry: int | None = None) -> str:
    """The audit event of the transaction at ``index`` of block ``height``; ``entry``: the
    entry's position in a transaction that records several events (``access_batch``),
    written ``.<entry>`` after the index so that keys sort in commit order (``00007`` <
    ``00007.0000`` < ``00007.0001`` < ``00008``)."""
    key = f"audit/{patient}/{height:012d}/{index:05d}"
    return key if entry is None else f"{key}.{entry:04d}"


def audit_prefix(patient: str) -> str:
    """The prefix of every audit event of ``patient`` (in commit order)."""
    return f"audit/{patient}/"


def delegation_key(delegation_id: str) -> str:
    """A patient's standing delegation of one label (docs/security.md, "Standing delegation")."""
    return f"delegation/{delegation_id}"


def standing_key(patient: str, label: str, epoch: int = 0) -> str:
    """The id of ``patient``'s current standing delegation of ``label`` at label-key
    ``epoch`` (absent: none)."""
    return f"standing/{patient}/{label}/{epoch}"


def revoked_key(patient: str, doctor: str) -> str:
    """``patient`` revoked a grant of ``doctor`` under the policy version it holds:
    no automatic grant for that doctor until the policy changes."""
    return f"revoked/{patient}/{doctor}"


def break_glass_key(break_glass_id: str) -> str:
    return f"breakglass/{break_glass_id}"


# kind -> number of parts after it
_ARITY = {"meta": 1, "cert": 1, "serial": 1, "nonce": 2, "token": 2, "record": 2, "policy": 1,
          "request": 1, "grant": 1, "active": 3, "audit": 3, "delegation": 1, "standing": 3, "revoked": 2,
          "breakglass": 1}


@dataclass(frozen=True, slots=True)
class StateKey:
    """A state key split into its kind (``"record"``, ...) and its parts
    (``("alice", "rec-1")``), as :func:`parse_key` returns it."""

    kind: str
    parts: tuple[str, ...]


def parse_key(key: str) -> StateKey:
    """Split a state key the ledger writes; DecodeError for any other string."""
    kind, _, rest = key.partition("/")
    arity = _ARITY.get(kind)
    parts = tuple(rest.split("/")) if rest else ()
    if arity is None or len(parts) != arity or not all(parts):
        raise DecodeError(f"{key[:80]!r} is not a ledger state key")
    return StateKey(kind, parts)


# peer.query forms that read one entry: the query's ``what`` (= the key's kind) -> its id fields
ENTRY_QUERIES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "cert": ("subject",),
    "record": ("patient", "record_id"),
    "request": ("request_id",),
    "grant": ("grant_id",),
    "policy": ("patient",),
})
_ENTRY_KEYS = {"cert": cert_key, "record": record_key, "request": request_key, "grant": grant_key,
               "policy": policy_key}


def entry_key(what: str, *ids: str) -> str:
    """The key an entry query reads: ``entry_key("record", patient, record_id)``."""
    fields = ENTRY_QUERIES.get(what)
    if fields is None or len(ids) != len(fields):
        raise ValueError(f"no entry query {what!r} with {len(ids)} ids")
    return _ENTRY_KEYS[what](*ids)


def entry_query(key: str) -> dict[str, str]:
    """The ``peer.query`` body that reads the entry at ``key`` (DecodeError if no query does)."""
    parsed = parse_key(key)
    fields = ENTRY_QUERIES.get(parsed.kind)
    if fields is None:
        raise DecodeError(f"no peer.query reads {parsed.kind} entries")
    return {"what": parsed.kind, **dict(zip(fields, parsed.parts))}


# ------------------------------------------------------------------ views

_OPTIONAL = object()


def _is(value: Any, kind: Any) -> bool:
    if kind is int:
        return type(value) is int
    if kind is bool:
        return type(value) is bool
    if kind is None:
        return value is None
    if isinstance(kind, tuple):
        return any(_is(value, k) for k in kind)
    return isinstance(value, kind)


def _fields(value: Any, what: str, required: dict[str, Any], optional: dict[str, Any] | None = None,
            ) -> dict[str, Any]:
    """Check ``value`` is a map with the ``required`` fields and maybe the ``optional``
    ones (name -> type, or tuple of types; None stands for nil), and nothing else."""
    optional = optional or {}
    if not isinstance(value, dict):
        raise DecodeError(f"{what} entry must be a map, not {type(value).__name__}")
    missing = required.keys() - value.keys()
    extra = value.keys() - required.keys() - optional.keys()
    if missing or extra:
        raise DecodeError(f"{what} entry: missing fields {sorted(missing)}, unknown fields {sorted(map(str, extra))}")
    out = {}
    for name, kind in (*required.items(), *optional.items()):
        field_value = value.get(name, _OPTIONAL)
        if field_value is _OPTIONAL:
            out[name] = None
            continue
        if not _is(field_value, kind):
            raise DecodeError(f"{what} entry: field {name!r} has the wrong type")
        out[name] = field_value
    return out


# a view field's annotation -> the type its value has in the stored map (what _is checks)
_STORED: dict[Any, Any] = {str: str, int: int, bool: bool, bytes: bytes, Mapping[str, bytes]: dict,
                           tuple[str, ...]: list, Decision: dict, Certificate: dict}


@functools.cache
def _stored_shape(view: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``required`` and ``optional`` fields of :func:`_fields` for the dataclass
    ``view`` (see the module docstring); TypeError for an annotation :data:`_STORED`
    does not know, so a new field cannot go unchecked."""
    hints = get_type_hints(view)
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for f in dataclasses.fields(view):
        hint = hints[f.name]
        arms = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if not all(arm is type(None) or arm in _STORED for arm in arms):
            raise TypeError(f"{view.__name__}.{f.name}: no stored type for {hint}")
        kinds = tuple(None if arm is type(None) else _STORED[arm] for arm in arms)
        if f.default is None:  # may be absent; when present, the one type besides None
            optional[f.name] = next(k for k in kinds if k is not None)
        else:
            required[f.name] = kinds if len(kinds) > 1 else kinds[0]
    return required, optional


def _read(view: type, value: Any, what: str) -> dict[str, Any]:
    """``value`` checked as a stored ``view`` (:func:`_fields` with its :func:`_stored_shape`)."""
    return _fields(value, what, *_stored_shape(view))


def _peer_digests(value: dict, what: str) -> Mapping[str, bytes]:
    """``value`` checked as peer id -> 32-byte SHA-256 (a grant's key shares, a delegation's
    standing parts), read-only."""
    if not all(isinstance(k, str) and isinstance(v, bytes) and len(v) == 32 for k, v in value.items()):
        raise DecodeError(f"{what} must map peer ids to 32-byte hashes")
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class CertEntry:
    """``cert/<subject>``: a registered certificate, revoked or not."""

    cert: Certificate
    revoked: bool
    height: int
    revoked_at: int | None = None
    revoke_reason: str | None = None

    @classmethod
    def from_state(cls, value: Any) -> "CertEntry":
        f = _read(cls, value, "certificate")
        return cls(Certificate.from_dict(f["cert"]), f["revoked"], f["height"], f["revoked_at"],
                   f["revoke_reason"])

    @property
    def subject(self) -> str:
        return self.cert.subject

    @property
    def active_key(self) -> bytes | None:
        """The subject's ECDSA key while the certificate is not revoked, else None
        (what a key directory holds for the subject)."""
        return None if self.revoked else self.cert.ecdsa_key


@dataclass(frozen=True, slots=True)
class RecordEntry:
    """``record/<patient>/<record id>``: a stored record's metadata and its ``store`` transaction."""

    tx: bytes
    label: str
    cid: str
    size: int
    media_type: str
    capsule: bytes
    height: int
    epoch: int | None = None

    @classmethod
    def from_state(cls, value: Any) -> "RecordEntry":
        return cls(**_read(cls, value, "record"))

    @property
    def key_epoch(self) -> int:
        """The label-key epoch the record is sealed under (0 unless re-sealed or stored after a rotation)."""
        return self.epoch or 0

    def store_transaction(self) -> Transaction:
        """The committed ``store`` (or latest ``reseal``) transaction: the patient's signature
        over the CID and metadata."""
        return Transaction.from_bytes(self.tx)


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """``policy/<patient>``: the patient's current access policy."""

    policy: bytes
    version: int
    name: str
    height: int

    @classmethod
    def from_state(cls, value: Any) -> "PolicyEntry":
        return cls(**_read(cls, value, "policy"))

    def parsed(self) -> Policy:
        return Policy.from_msgpack(self.policy)


REQUEST_STATUSES = ("pending", "denied", "granted", "rejected")


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """``request/<request id>``: a doctor's access request, the policy's decision and its status
    (``pending``, ``denied`` by the policy, ``granted``, ``rejected`` by the patient)."""

    doctor: str
    patient: str
    record_id: str
    label: str
    operation: str
    purpose: str | None
    decision: Decision
    status: str
    time: int
    height: int
    grant_id: str | None = None
    reject_reason: str | None = None
    hold: str | None = None

    @classmethod
    def from_state(cls, value: Any) -> "RequestEntry":
        f = _read(cls, value, "request")
        if f["status"] not in REQUEST_STATUSES:
            raise DecodeError(f"request entry: unknown status {f['status'][:32]!r}")
        f["decision"] = Decision(**_read(Decision, f["decision"], "request decision"))
        return cls(**f)

    @property
    def allowed(self) -> bool:
        """Whether the patient's policy allowed the request."""
        return self.decision.effect == "allow"


@dataclass(frozen=True, slots=True)
class GrantEntry:
    """``grant/<grant id>``: a patient's grant of a label (``scope`` "label", or None
    for grants older than scopes) or of one record (``scope`` "record") to a doctor,
    with the SHA-256 of each peer's sealed re-encryption key share. A grant the
    ledger made itself from a standing delegation names it (``delegation``; the
    shares are then the delegation's parts), and one made by a break-glass names
    that (``break_glass``)."""

    patient: str
    doctor: str
    label: str
    record_id: str
    request_id: str
    threshold: int
    expires_at: int
    shares: Mapping[str, bytes]
    revoked: bool
    time: int
    height: int
    revoked_at: int | None = None
    scope: str | None = None
    delegation: str | None = None
    break_glass: str | None = None
    epoch: int | None = None

    @classmethod
    def from_state(cls, value: Any) -> "GrantEntry":
        f = _read(cls, value, "grant")
        f["shares"] = _peer_digests(f["shares"], "grant entry: shares")
        return cls(**f)

    def share_digest(self, peer_id: str) -> bytes | None:
        """SHA-256 of the sealed key share the grant gives ``peer_id`` (None: it holds none)."""
        return self.shares.get(peer_id)

    def active_at(self, now_s: int) -> bool:
        """Not revoked and not expired at Unix second ``now_s``."""
        return not self.revoked and now_s < self.expires_at

    def covers(self, record_id: str) -> bool:
        """Whether the grant's scope includes ``record_id`` (the label's check is the caller's)."""
        return self.scope != "record" or record_id == self.record_id


DELEGATION_MODES = ("auto", "emergency")


@dataclass(frozen=True, slots=True)
class DelegationEntry:
    """``delegation/<id>``: a patient's standing delegation of ``label``: the SHA-256 of
    each peer's sealed standing part (core.pre.make_standing_parts), t of n. ``mode``
    "auto": the ledger grants any doctor the policy allows with approval auto (and
    break-glass accesses); "emergency": break-glass accesses only."""

    patient: str
    label: str
    mode: str
    threshold: int
    parts: Mapping[str, bytes]
    time: int
    height: int
    epoch: int = 0

    @classmethod
    def from_state(cls, value: Any) -> "DelegationEntry":
        f = _read(cls, value, "delegation")
        if f["mode"] not in DELEGATION_MODES:
            raise DecodeError(f"delegation entry: unknown mode {f['mode'][:32]!r}")
        f["parts"] = _peer_digests(f["parts"], "delegation entry: parts")
        return cls(**f)

    def part_digest(self, peer_id: str) -> bytes | None:
        return self.parts.get(peer_id)


@dataclass(frozen=True, slots=True)
class BreakGlassEntry:
    """``breakglass/<id>``: an emergency access: the doctor, the record, the stated
    reason, the officers who co-signed, the window's end and the grant it made."""

    doctor: str
    patient: str
    record_id: str
    label: str
    reason: str
    cosigners: tuple[str, ...]
    expires_at: int
    grant_id: str
    time: int
    height: int

    @classmethod
    def from_state(cls, value: Any) -> "BreakGlassEntry":
        f = _read(cls, value, "break-glass")
        if not all(isinstance(c, str) for c in f["cosigners"]):
            raise DecodeError("break-glass entry: cosigners must be ids")
        f["cosigners"] = tuple(f["cosigners"])
        return cls(**f)
