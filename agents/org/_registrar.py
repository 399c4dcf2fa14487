"""The registrar's side of enrollment: a token file bound to the subject's enrolling key,
and the TLS client certificate the subject connects with.

A user's *request* (:class:`EnrollRequest`, ``emrshare user init`` writes it as
``request.json``) is public: the enrolling ECDSA public key and the user's TLS
public key (P-256, PEM). A token file (JSON, :class:`TokenFile`) carries the
enrollment token (:mod:`core.enrollment`, signed by the organization's registrar
key), what it authorizes (subject, organization, attributes, the enrolling public
key, the expiry) and, when the request gave a TLS key, the user's TLS client
certificate issued by the organization's TLS CA (:func:`agents.org._tls.make_user_cert`:
URI SAN ``emrshare:agent:<subject>``, clientAuth only). It is not secret on its own
(it enrolls only the holder of that key, once, and the certificate is useless
without the TLS private key) but it names a person: hand it over as you would the
person's details. :func:`check_user_cert` is the user's check of that certificate
before it is used.
"""

from __future__ import annotations

import datetime
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core import ecdsa, enrollment
from core.errors import DecodeError

from agents.org import _tls
from agents.org._material import OrgDir, OrgError, read_versioned
from agents.tls import certificate_agents

TOKEN_FILE_VERSION = 1
REQUEST_VERSION = 1
USER_CERT_DAYS = _tls.USER_DAYS  # a user TLS certificate's default lifetime (registrar issue --cert-days)


@dataclass(frozen=True)
class TokenFile:
    org: str
    subject: str
    attributes: dict[str, Any]
    enroll_key: bytes
    expires: int
    token: bytes
    tls_cert: str = ""  # the user's TLS client certificate (PEM), "" when none was requested

    def to_json(self) -> str:
        return json.dumps({"version": TOKEN_FILE_VERSION, "org": self.org, "subject": self.subject,
                           "attributes": self.attributes, "enroll_key": self.enroll_key.hex(),
                           "expires": self.expires, "token": self.token.hex(), "tls_cert": self.tls_cert}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "token file") -> "TokenFile":
        try:
            d = read_versioned(text, TOKEN_FILE_VERSION, "an enrollment token file")
            out = cls(d["org"], d["subject"], d["attributes"], bytes.fromhex(d["enroll_key"]), d["expires"],
                      bytes.fromhex(d["token"]), d.get("tls_cert", ""))
            if not (isinstance(out.org, str) and isinstance(out.subject, str) and isinstance(out.attributes, dict)
                    and type(out.expires) is int and isinstance(out.tls_cert, str)):
                raise ValueError("org, subject, attributes, expires or tls_cert has the wrong type")
            enrollment.EnrollmentToken.from_bytes(out.token)
            if out.tls_cert:
                x509.load_pem_x509_certificate(out.tls_cert.encode())
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            raise OrgError(f"reading {source}: {exc}; ask the registrar for a new token") from None
        return out


@dataclass(frozen=True)
class EnrollRequest:
    """What a user hands its registrar (public): the enrolling ECDSA key and the TLS public key (PEM)."""

    enroll_key: bytes
    tls_key: str

    def to_json(self) -> str:
        return json.dumps({"version": REQUEST_VERSION, "enroll_key": self.enroll_key.hex(),
                           "tls_key": self.tls_key}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "request") -> "EnrollRequest":
        try:
            d = read_versioned(text, REQUEST_VERSION, "an enrollment request")
            enroll_key, tls_key = d["enroll_key"], d["tls_key"]
            if not isinstance(enroll_key, str) or not isinstance(tls_key, str):
                raise ValueError("enroll_key and tls_key must be text")
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            raise OrgError(f"reading {source}: {exc}; give the request.json `emrshare user init` wrote") from None
        out = cls(parse_enroll_key(enroll_key), tls_key)
        parse_tls_key(tls_key, source=source)
        return out


def parse_enroll_key(text: str) -> bytes:
    """A compressed ECDSA public key from hex or an ``enroll:<hex>`` id (what `emrshare user init` prints)."""
    raw = text.strip().removeprefix("enroll:")
    try:
        key = bytes.fromhex(raw)
        ecdsa.decode_public_key(key)
    except (ValueError, DecodeError):
        raise OrgError("reading the enrolling key: not a compressed ECDSA public key in hex; give what "
                       "`emrshare user init` printed") from None
    return key


def parse_tls_key(pem: str | bytes, *, source: str = "the TLS key") -> ec.EllipticCurvePublicKey:
    """A user's TLS public key: P-256 in PEM (SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise OrgError(f"reading {source}: not a P-256 public key in PEM; give the request.json "
                       "`emrshare user init` wrote")
    return key


def new_user_tls_key() -> tuple[bytes, str]:
    """A fresh TLS key for a user: (PKCS#8 DER to keep in the user's encrypted key store,
    the public key's PEM for the request)."""
    der = _tls.key_to_der(_tls.new_key())
    return der, tls_public_pem(der)


def tls_public_pem(der: bytes) -> str:
    """The public key's PEM of a PKCS#8 DER private key."""
    return _tls.key_from_der(der).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def issue_token(org_dir: OrgDir, *, subject: str, attributes: dict[str, Any], enroll_key: bytes,
                expires: int, tls_key: ec.EllipticCurvePublicKey | None = None, cert_days: int = USER_CERT_DAYS,
                now: datetime.datetime | None = None) -> TokenFile:
    """A token for one enrollment of ``subject`` with ``attributes`` from ``enroll_key``,
    valid until ``expires`` (unix seconds), signed with the organization's registrar key;
    with ``tls_key``, also the subject's TLS client certificate from the organization's
    TLS CA, valid ``cert_days`` (at most the CA's own validity)."""
    profile = org_dir.profile()
    org = profile.org
    try:
        _tls.check_user_subject(subject, [n.id for n in profile.nodes])
    except ValueError as exc:
        raise OrgError(f"issuing a token for {subject}: {exc}; give the person's own subject") from None
    registrar = org_dir.registrar_key()
    cert = ""
    if tls_key is not None:
        if cert_days <= 0:
            raise OrgError(f"issuing a TLS certificate for {subject}: {cert_days} days; give --cert-days >= 1")
        ca_key = _tls.key_from_der(org_dir._load("tls-ca.keys"))
        try:
            ca_pem = org_dir.tls_ca_pem()
        except FileNotFoundError:
            raise OrgError(f"issuing a TLS certificate for {subject}: no tls/ca.pem in {org_dir.dir}; "
                           "is this the organization directory `emrshare org init` made?") from None
        cert = _tls.make_user_cert(org, subject, tls_key, ca_pem, ca_key,
                                   now or datetime.datetime.now(datetime.timezone.utc), cert_days).decode()
    try:
        token = enrollment.issue(registrar, subject=subject, org=org, attributes=attributes, enroll_key=enroll_key,
                                 expires=expires, token_id=secrets.token_bytes(enrollment.TOKEN_ID_SIZE))
    except ValueError as exc:
        raise OrgError(f"issuing a token for {subject}: {exc}; give attributes as k=v pairs") from None
    return TokenFile(org, subject, dict(attributes), enroll_key, expires, token.to_bytes(), cert)


def check_user_cert(cert_pem: str | bytes, *, subject: str, org: str, ca_pem: str | bytes,
                    tls_key: ec.EllipticCurvePublicKey, now: datetime.datetime) -> None:
    """Check a user's TLS certificate before using it: issued by ``org``'s TLS CA
    (``ca_pem``, from the genesis), naming ``subject``, for ``tls_key`` (the user's
    own), valid at ``now``. OrgError saying which check failed."""
    what = f"checking the TLS certificate of {subject}"
    todo = "ask your registrar to issue the token again from your request.json"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem.encode() if isinstance(ca_pem, str) else ca_pem)
    except ValueError as exc:
        raise OrgError(f"{what}: it or {org}'s TLS CA is not a PEM certificate ({exc}); {todo}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise OrgError(f"{what}: it was not issued by the TLS CA of {org} in the genesis; {todo}") from None
    if subject not in certificate_agents(cert.public_bytes(serialization.Encoding.DER)):
        raise OrgError(f"{what}: it does not name {subject}; {todo}")
    if cert.public_key().public_numbers() != tls_key.public_numbers():
        raise OrgError(f"{what}: it certifies another TLS key than the one in your directory; {todo}")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise OrgError(f"{what}: it is valid from {cert.not_valid_before_utc:%Y-%m-%d} to "
                       f"{cert.not_valid_after_utc:%Y-%m-%d}, not now; {todo}")
