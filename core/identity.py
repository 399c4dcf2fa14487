"""Identities: attribute certificates issued by each organization's peer, and the consortium.

A user's certificate carries its subject id, organization, attributes (role,
department, specialty, ...), its three public keys (ECDSA for signatures,
X25519 for sealed boxes, the PRE receiving key with its proof of possession),
a validity window and a serial, signed by the issuing peer of its organization
(as a Fabric MSP does). The consortium configuration (genesis) names the
organizations (each with its admin key, which signs the configuration, its
registrar key, which signs enrollment tokens, and its TLS CA certificate), their
peers (with ECDSA key, X25519 key and proxy index), the orderer's key and the
re-encryption threshold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from . import canonical, ecdsa
from .errors import DecodeError, SignatureError

__all__ = ["Certificate", "PeerInfo", "OrgInfo", "OrdererInfo", "ConsortiumConfig", "MAX_ORDERERS", "CERT_TAG",
           "RESERVED_CERT_ATTRIBUTES", "check_id", "CONFIG_SIGN_TAG"]

CERT_TAG = "emrshare/v1/certificate"
CONFIG_TAG = "emrshare/v1/consortium"
CONFIG_SIGN_TAG = "emrshare/v1/consortium-config"  # an organization admin's signature over a configuration
MAX_ID = 128
MAX_ORDERERS = 16  # a consortium's orderer set: one node per organization is the usual size
MAX_ATTRIBUTES = 32
# Attribute names the policy engine fills from the certificate's own fields
# (``id`` = subject, ``organization`` = issuing organization): a certificate may not
# carry them as attributes, or they would let a registrar of one hospital dress a
# user up as someone of another.
RESERVED_CERT_ATTRIBUTES = frozenset({"id", "organization"})


def check_id(value: object, what: str) -> str:
    """Ids: 1..128 chars of [A-Za-z0-9._:@-]."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID:
        raise DecodeError(f"{what} must be a string of 1..{MAX_ID} characters")
    if not all(c.isascii() and (c.isalnum() or c in "._:@-") for c in value):
        raise DecodeError(f"{what} {value!r} has characters outside [A-Za-z0-9._:@-]")
    return value


def _check_bytes(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise DecodeError(f"{what} must be {size} bytes")
    return value


def _check_int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise DecodeError(f"{what} must be a non-negative integer")
    return value


def _check_attributes(attrs: object) -> dict[str, Any]:
    if not isinstance(attrs, Mapping):
        raise DecodeError("certificate attributes must be a map")
    if len(attrs) > MAX_ATTRIBUTES:
        raise DecodeError(f"certificate has more than {MAX_ATTRIBUTES} attributes")
    out = {}
    for k, v in attrs.items():
        if not isinstance(k, str) or not 0 < len(k) <= 64:
            raise DecodeError("attribute names must be strings of 1..64 characters")
        if k in RESERVED_CERT_ATTRIBUTES:
            raise DecodeError(f"attribute name {k!r} is reserved: it is set from the certificate's own fields")
        if isinstance(v, bool) or (isinstance(v, int) and -(2**63) <= v < 2**63):
            out[k] = v
        elif isinstance(v, str) and len(v) <= 256:
            out[k] = v
        else:
            raise DecodeError(f"attribute {k!r} must be a string, an integer or a boolean")
    role = out.get("role")
    if not isinstance(role, str) or not role:
        raise DecodeError("certificate attributes must include a non-empty 'role'")
    return out


@dataclass(frozen=True, slots=True)
class Certificate:
    serial: str
    subject: str
    org: str
    attributes: Mapping[str, Any]
    ecdsa_key: bytes
    box_key: bytes
    pre_key: bytes
    pre_proof: bytes
    valid_from: int
    valid_until: int
    issuer: str
    signature: bytes = field(default=b"", compare=True)

    def __post_init__(self) -> None:
        check_id(self.serial, "certificate serial")
        check_id(self.subject, "certificate subject")
        check_id(self.org, "certificate organization")
        check_id(self.issuer, "certificate issuer")
        object.__setattr__(self, "attributes", MappingProxyType(_check_attributes(self.attributes)))
        _check_bytes(self.ecdsa_key, 33, "certificate ECDSA key")
        _check_bytes(self.box_key, 32, "certificate X25519 key")
        _check_bytes(self.pre_key, 144, "certificate PRE key")
        _check_bytes(self.pre_proof, 64, "certificate PRE proof")
        _check_int(self.valid_from, "certificate valid_from")
        _check_int(self.valid_until, "certificate valid_until")
        if self.valid_until <= self.valid_from:
            raise DecodeError("certificate validity window is empty")
        if self.signature and len(self.signature) != 64:
            raise DecodeError("certificate signature must be 64 bytes")

    @property
    def role(self) -> str:
        return self.attributes["role"]

    def _fields(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "subject": self.subject,
            "org": self.org,
            "attributes": dict(self.attributes),
            "ecdsa_key": self.ecdsa_key,
            "box_key": self.box_key,
            "pre_key": self.pre_key,
            "pre_proof": self.pre_proof,
            "valid_from": self.valid_from,
            "valid_until": self.valid_until,
            "issuer": self.issuer,
        }

    def signed_bytes(self) -> bytes:
        return canonical.pack(self._fields())

    def sign(self, issuer_private_key: bytes) -> "Certificate":
        sig = ecdsa.sign(issuer_private_key, CERT_TAG, self.signed_bytes())
        return Certificate(**{**self._fields(), "signature": sig})

    def is_valid_signature(self, issuer_public_key: bytes) -> bool:
        """True when the certificate is signed under ``issuer_public_key``."""
        return bool(self.signature) and ecdsa.is_valid(issuer_public_key, CERT_TAG, self.signed_bytes(),
                                                        self.signature)

    def verify_signature(self, issuer_public_key: bytes) -> None:
        """Raise SignatureError unless the certificate is signed under ``issuer_public_key``."""
        if not self.is_valid_signature(issuer_public_key):
            raise SignatureError(f"certificate {self.serial} is not signed by {self.issuer}")

    def to_dict(self) -> dict[str, Any]:
        return {**self._fields(), "signature": self.signature}

    @classmethod
    def from_dict(cls, d: object) -> "Certificate":
        if not isinstance(d, dict):
            raise DecodeError("certificate must be a map")
        keys = {"serial", "subject", "org", "attributes", "ecdsa_key", "box_key", "pre_key",
                "pre_proof", "valid_from", "valid_until", "issuer", "signature"}
        if set(d) != keys:
            raise DecodeError(f"certificate fields must be exactly {sorted(keys)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise DecodeError(f"certificate: {exc}") from exc

    def to_bytes(self) -> bytes:
        return canonical.pack(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Certificate":
        return cls.from_dict(canonical.unpack(data, max_size=16384, what="certificate"))

    def valid_at(self, t: int) -> bool:
        return self.valid_from <= t < self.valid_until


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A consortium peer: also a re-encryption proxy with a public index."""

    id: str
    org: str
    ecdsa_key: bytes
    box_key: bytes
    index: int

    def __post_init__(self) -> None:
        check_id(self.id, "peer id")
        check_id(self.org, "peer organization")
        _check_bytes(self.ecdsa_key, 33, "peer ECDSA key")
        _check_bytes(self.box_key, 32, "peer X25519 key")
        if type(self.index) is not int or not 0 < self.index < 2**31:
            raise DecodeError("peer proxy index must be a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "org": self.org, "ecdsa_key": self.ecdsa_key,
                "box_key": self.box_key, "index": self.index}


MAX_TLS_CA = 8192  # characters of an organization's TLS CA certificate (PEM)


@dataclass(frozen=True, slots=True)
class OrgInfo:
    """A member organization: its id and name, its admin key (signs the consortium
    configuration: the genesis, and later configuration changes), its registrar key
    (signs enrollment tokens, :mod:`core.enrollment`) and its TLS CA certificate
    (PEM; empty when the organization runs without TLS, as the embedded swarm)."""

    id: str
    name: str
    admin_key: bytes
    registrar_key: bytes
    tls_ca: str = ""

    def __post_init__(self) -> None:
        check_id(self.id, "organization id")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 256:
            raise DecodeError("organization name must be 1..256 characters")
        _check_bytes(self.admin_key, 33, "organization admin key")
        _check_bytes(self.registrar_key, 33, "organization registrar key")
        if not isinstance(self.tls_ca, str) or len(self.tls_ca) > MAX_TLS_CA:
            raise DecodeError(f"organization TLS CA must be a PEM string of at most {MAX_TLS_CA} characters")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "admin_key": self.admin_key,
                "registrar_key": self.registrar_key, "tls_ca": self.tls_ca}


@dataclass(frozen=True, slots=True)
class OrdererInfo:
    """One node of the ordering service's set (etcd ordering: any of them may lead and sign)."""

    id: str
    key: bytes  # ECDSA public key (33 bytes, compressed)

    def __post_init__(self) -> None:
        check_id(self.id, "orderer id")
        _check_bytes(self.key, 33, "orderer key")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key}


@dataclass(frozen=True, slots=True)
class ConsortiumConfig:
    """The genesis: organizations, peers, orderer key, threshold and time rules.

    ``orderer_id``/``orderer_key`` name the orderer that signed the genesis (the
    embedded orderer signs every block with it). ``orderers`` is the ordering
    service's set when it has several nodes (etcd ordering): a block signed by
    any key of :attr:`orderer_keys` binds the peers. It is encoded only when not
    empty, so a single-orderer genesis keeps its bytes and hash.
    """

    name: str
    orgs: tuple[OrgInfo, ...]
    peers: tuple[PeerInfo, ...]
    orderer_id: str
    orderer_key: bytes
    threshold: int
    max_skew_ms: int = 120_000
    created_at: int = 0
    orderers: tuple[OrdererInfo, ...] = ()

    def __post_init__(self) -> None:
        check_id(self.name, "consortium name")
        check_id(self.orderer_id, "orderer id")
        _check_bytes(self.orderer_key, 33, "orderer key")
        if not isinstance(self.orderers, tuple) or len(self.orderers) > MAX_ORDERERS:
            raise DecodeError(f"the orderer set holds at most {MAX_ORDERERS} nodes")
        if len({o.id for o in self.orderers}) != len(self.orderers):
            raise DecodeError("orderer ids must be distinct")
        if len({o.key for o in self.orderers}) != len(self.orderers):
            raise DecodeError("orderer keys must be distinct")
        if not self.orgs or not self.peers:
            raise DecodeError("a consortium needs at least one organization and one peer")
        org_ids = [o.id for o in self.orgs]
        if len(set(org_ids)) != len(org_ids):
            raise DecodeError("organization ids must be distinct")
        if len({p.id for p in self.peers}) != len(self.peers):
            raise DecodeError("peer ids must be distinct")
        if len({p.index for p in self.peers}) != len(self.peers):
            raise DecodeError("peer proxy indices must be distinct")
        for p in self.peers:
            if p.org not in org_ids:
                raise DecodeError(f"peer {p.id} belongs to unknown organization {p.org}")
        if type(self.threshold) is not int or not 1 <= self.threshold <= len(self.peers):
            raise DecodeError("threshold must be between 1 and the number of peers")
        _check_int(self.max_skew_ms, "max_skew_ms")
        _check_int(self.created_at, "created_at")

    def org(self, org_id: str) -> OrgInfo | None:
        for o in self.orgs:
            if o.id == org_id:
                return o
        return None
    @property
    def orderer_keys(self) -> tuple[bytes, ...]:
        """The keys whose block signatures bind the peers: the genesis orderer's, then the set's."""
        return tuple(dict.fromkeys([self.orderer_key, *(o.key for o in self.orderers)]))

    @property
    def orderer_ids(self) -> tuple[str, ...]:
        """The orderer nodes peers follow: the set when there is one, else the genesis orderer."""
        return tuple(o.id for o in self.orderers) or (self.orderer_id,)

    def peer(self, peer_id: str) -> PeerInfo | None:
        for p in self.peers:
            if p.id == peer_id:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "orgs": [o.to_dict() for o in self.orgs],
            "peers": [p.to_dict() for p in self.peers],
            "orderer_id": self.orderer_id,
            "orderer_key": self.orderer_key,
            "threshold": self.threshold,
            "max_skew_ms": self.max_skew_ms,
            "created_at": self.created_at,
        }
        if self.orderers:
            d["orderers"] = [o.to_dict() for o in self.orderers]
        return d

    def to_bytes(self) -> bytes:
        return canonical.pack(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> "ConsortiumConfig":
        d = canonical.unpack(data, max_size=1 << 20, what="consortium config")
        try:
            return cls(
                d["name"],
                tuple(OrgInfo(**o) for o in d["orgs"]),
                tuple(PeerInfo(**p) for p in d["peers"]),
                d["orderer_id"],
                d["orderer_key"],
                d["threshold"],
                d["max_skew_ms"],
                d["created_at"],
                tuple(OrdererInfo(**o) for o in d.get("orderers", ())),
            )
        except (KeyError, TypeError) as exc:
            raise DecodeError(f"consortium config: malformed ({exc})") from exc

    def digest(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    def sign_as_org(self, admin_private_key: bytes) -> bytes:
        """An organization's signature over this configuration (its admin key):
        what the genesis carries for every member (:func:`core.ledger.parse_genesis`)."""
        return ecdsa.sign(admin_private_key, CONFIG_SIGN_TAG, self.digest())

    def is_signed_by(self, org_id: str, signature: bytes) -> bool:
        """Whether ``signature`` is member ``org_id``'s admin signature over this configuration."""
        org = self.org(org_id)
        return org is not None and ecdsa.is_valid(org.admin_key, CONFIG_SIGN_TAG, self.digest(), signature)
