"""An organization's TLS CA and its nodes' certificates (X.509 through ``cryptography``).

Keys are ECDSA P-256 (every TLS 1.3 stack offers ``ecdsa_secp256r1_sha256``).
The CA certificate is self-signed, may sign end-entity certificates only
(path length 0) and is what the organization's profile and the genesis carry.
A node certificate names its agent id as a DNS SAN and as the URI SAN
``emrshare:agent:<id>``, plus the host it listens on (an IP SAN for an address,
a DNS SAN for a name); it may serve and be a client (mutual TLS). A user
certificate (:func:`make_user_cert`) names its subject as the URI SAN
``emrshare:agent:<subject>`` and is a client certificate only (unless it is
given hosts it listens on: a patient serving its doctors' requests).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents.tls import AGENT_URI_PREFIX, certificate_agents

CA_DAYS = 3650
NODE_DAYS = 825
USER_DAYS = 365


def _serial() -> int:
    return int.from_bytes(secrets.token_bytes(16), "big") >> 1


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_from_der(der: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def key_to_pem(der: bytes) -> bytes:
    """The unencrypted PEM of a PKCS#8 DER key (for an ``ssl`` context, in memory only)."""
    return key_from_der(der).private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


def make_ca(org: str, key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> bytes:
    """The organization's self-signed TLS CA certificate (PEM)."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{org} TLS CA")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(_serial()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(org: str, name: str, public_key: ec.EllipticCurvePublicKey, names: list[x509.GeneralName],
           usages: list[x509.ObjectIdentifier], ca_pem: bytes, ca_key: ec.EllipticCurvePrivateKey,
           now: datetime.datetime, days: int) -> bytes:
    """An end-entity certificate (PEM) issued by the CA ``ca_pem``/``ca_key``: subject O=org, CN=name,
    SANs ``names``, extended key usages ``usages``, digitalSignature only, valid ``days`` (at most as
    long as the CA)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                                 x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject).public_key(public_key).serial_number(_serial())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def make_node_cert(org: str, agent: str, hosts: list[str], node_key: ec.EllipticCurvePrivateKey,
                   ca_pem: bytes, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> bytes:
    """A node's TLS certificate (PEM) issued by the organization's CA: SANs
    ``DNS:<agent>``, ``URI:emrshare:agent:<agent>`` and each of ``hosts``."""
    names: list[x509.GeneralName] = [x509.DNSName(agent), x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent)]
    names += [_host_name(h) for h in dict.fromkeys(hosts)]
    return _issue(org, agent, node_key.public_key(), names,
                  [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], ca_pem, ca_key, now, NODE_DAYS)


def make_user_cert(org: str, subject: str, user_public_key: ec.EllipticCurvePublicKey, ca_pem: bytes,
                   ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime, days: int = USER_DAYS, *,
                   hosts: tuple[str, ...] | list[str] = ()) -> bytes:
    """A user's TLS client certificate (PEM) issued by its organization's CA: the URI SAN
    ``emrshare:agent:<subject>``, extended key usage clientAuth only, valid ``days`` (at most
    as long as the CA). With ``hosts`` (addresses or names it listens on) it may serve too
    (serverAuth, and those hosts as SANs)."""
    if days <= 0:
        raise ValueError("a certificate must be valid for at least one day")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + subject)]
    names += [_host_name(h) for h in dict.fromkeys(hosts)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
    return _issue(org, subject, user_public_key, names, usages, ca_pem, ca_key, now, days)


def user_tls(org_dir, subject: str, *, hosts: tuple[str, ...] | list[str] = (), days: int = USER_DAYS,
             now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A fresh TLS key and certificate for user ``subject`` from the TLS CA of ``org_dir``
    (an unlocked :class:`agents.org.OrgDir`): (certificate PEM, private key PKCS#8 DER).
    OrgError when ``subject`` is one of the organization's nodes (:func:`check_user_subject`)."""
    from agents.org._material import OrgError

    profile = org_dir.profile()
    org = profile.org
    try:
        check_user_subject(subject, [n.id for n in profile.nodes])
    except ValueError as exc:
        raise OrgError(f"issuing a TLS certificate for {subject}: {exc}; choose a user's own subject") from None
    ca_key = key_from_der(org_dir._load("tls-ca.keys"))
    key = new_key()
    cert = make_user_cert(org, subject, key.public_key(), org_dir.tls_ca_pem(), ca_key,
                          now or datetime.datetime.now(datetime.timezone.utc), days, hosts=hosts)
    return cert, key_to_der(key)


def check_user_subject(subject: str, node_ids: list[str]) -> None:
    """A user certificate must not name a node of its organization (ValueError): it would name
    that node at the TLS layer (a node refuses a client-only certificate as a node's,
    :func:`agents.tls.admit_nodes`, but a registrar should not make one)."""
    if subject in node_ids:
        raise ValueError(f"{subject!r} is a node of this organization, not a user")


def cert_agent_ids(cert_pem: bytes) -> list[str]:
    """The agent ids a node certificate (PEM) names (its ``emrshare:agent:`` URI SANs)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return sorted(certificate_agents(der))
