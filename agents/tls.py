"""Mutual TLS under the bus's channels: ``ssl`` contexts from an organization's TLS
material, and the rule that a consortium node's certificate names the agents it proves.

TLS is the *node* layer (docs/security.md, "Authenticated encrypted channels"): it
decides which machines may connect at all, a certificate chaining to the TLS CA of
a member organization (the genesis lists them); the bus's channel above it decides
which agents speak, each proved with its own key. A consortium node (peer, orderer,
storage node) must present a certificate naming, as a URI SAN
``emrshare:agent:<id>``, every agent id it proves on the channel, issued by its
own organization's TLS CA (:func:`admit_nodes`, given to
``bus.open_node(admit_peer=...)``); a user proves its agent id with its ledger
key alone.

TLS 1.3 only, the standard library's ``ssl`` (OpenSSL) for the protocol and the
``cryptography`` package to read certificates. A private key is handed to OpenSSL
through an anonymous in-memory file (``memfd_create``), never written to disk.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from bus import TcpTransport

__all__ = ["AGENT_URI_PREFIX", "NodeTls", "admit_nodes", "certificate_agents", "check_ca_pem", "client_context",
           "genesis_cas", "node_cas", "server_context", "tls_transport"]

AGENT_URI_PREFIX = "emrshare:agent:"

log = logging.getLogger("agents.tls")


def _base(purpose: ssl.Purpose, ca_pems: Iterable[bytes]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if not _load_cas([ctx], ca_pems):
        raise ValueError("no TLS CA certificate to trust: the genesis names none OpenSSL can load")
    return ctx


def _load_cas(contexts: list[ssl.SSLContext], ca_pems: Iterable[bytes | str]) -> list[bytes]:
    """Trust each of ``ca_pems`` in every context; the ones loaded. A member's CA that OpenSSL
    cannot load (the consortium configuration checks only its length) is skipped with a
    warning: one member's bad text must not stop every node (its own nodes are not trusted)."""
    loaded = []
    for pem in map(_pem_bytes, ca_pems):
        if not pem.strip():
            continue
        try:
            check_ca_pem(pem)
            for ctx in contexts:
                ctx.load_verify_locations(cadata=pem.decode("utf-8", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            log.warning("a member organization's TLS CA is refused (%s); its nodes and users are not trusted",
                        str(exc)[:200])
            continue
        loaded.append(pem)
    return loaded


def check_ca_pem(pem: bytes | str) -> None:
    """ValueError unless ``pem`` is exactly one certificate, of a CA (basic constraints CA:TRUE):
    what a member organization's ``tls_ca`` must be. A member cannot slip a second certificate
    (a public web CA, say) into every node's trust store."""
    certs = x509.load_pem_x509_certificates(_pem_bytes(pem))  # ValueError when none parses
    if len(certs) != 1:
        raise ValueError(f"{len(certs)} certificates where one CA certificate belongs")
    try:
        ca = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise ValueError("the certificate is not a CA's (no basic constraints CA:TRUE)")


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate and its private key without writing the key to disk."""
    fd = os.memfd_create("emrshare-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def server_context(cert_pem: bytes, key_pem: bytes, ca_pems: Iterable[bytes], *,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    """A listener's context: our certificate, and a client must present one chaining
    to one of ``ca_pems`` (the member organizations' TLS CAs); with
    ``require_client_cert=False`` a client may present none (a user without a TLS
    certificate), but one it presents must still chain."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH, ca_pems)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_chain(ctx, cert_pem, key_pem)
    return ctx


def client_context(cert_pem: bytes | None, key_pem: bytes | None, ca_pems: Iterable[bytes]) -> ssl.SSLContext:
    """A connecting side's context: the server must chain to one of ``ca_pems`` and
    name the host it was reached at; our certificate, if given, for mutual TLS."""
    ctx = _base(ssl.Purpose.SERVER_AUTH, ca_pems)
    if cert_pem is not None and key_pem is not None:
        _load_chain(ctx, cert_pem, key_pem)
    return ctx


def tls_transport(cert_pem: bytes | None, key_pem: bytes | None, ca_pems: Iterable[bytes], *,
                  require_client_cert: bool = True, max_frame_size: int | None = None) -> TcpTransport:
    """The ``tcp`` transport of a node speaking mutual TLS (pass as
    ``open_node(transports={"tcp": ...})``); without a certificate of its own (a
    user) it can only connect."""
    return NodeTls(cert_pem, key_pem, ca_pems, require_client_cert=require_client_cert,
                   max_frame_size=max_frame_size).transport


class NodeTls:
    """A node's TLS: its :attr:`transport` (as :func:`tls_transport`) and the set of CAs
    it trusts, which :meth:`trust` widens while it runs (a member a configuration
    change added: its nodes connect without a restart). CAs are only ever added; an
    organization removed stays trusted at the TLS layer until the node restarts."""

    def __init__(self, cert_pem: bytes | None, key_pem: bytes | None, ca_pems: Iterable[bytes], *,
                 require_client_cert: bool = True, max_frame_size: int | None = None):
        given = [_pem_bytes(p) for p in ca_pems]
        cas = _load_cas([ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)], given)  # the ones OpenSSL loads (warns once)
        options = {} if max_frame_size is None else {"max_frame_size": max_frame_size}
        server = (server_context(cert_pem, key_pem, cas, require_client_cert=require_client_cert)
                  if cert_pem is not None and key_pem is not None else None)
        client = client_context(cert_pem, key_pem, cas)
        self._contexts = [c for c in (server, client) if c is not None]
        self.trusted: set[bytes] = set(cas)
        self._refused: set[bytes] = set(given) - self.trusted
        self.transport = TcpTransport(client_ssl=client, server_ssl=server, **options)

    def trust(self, ca_pems: Iterable[bytes | str]) -> list[bytes]:
        """Trust ``ca_pems`` too from the next handshake on; the CAs that were new."""
        new = [pem for pem in dict.fromkeys(map(_pem_bytes, ca_pems)) if pem not in self.trusted | self._refused]
        added = _load_cas(self._contexts, new)
        self.trusted.update(added)
        self._refused.update(set(new) - set(added))  # warned once, not at every commit
        return added


def certificate_agents(der: bytes) -> frozenset[str]:
    """The agent ids a certificate names (its ``emrshare:agent:`` URI SANs)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(uri[len(AGENT_URI_PREFIX):] for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
                     if uri.startswith(AGENT_URI_PREFIX))


NodeCas = Mapping[str, "bytes | str | tuple[bytes | str, ...]"]


def admit_nodes(node_cas: NodeCas | Callable[[], NodeCas],
                member_cas: Callable[[], Iterable[bytes | str]] | None = None) -> Callable[[str, bytes | None], bool]:
    """``admit_peer`` for ``bus.open_node``: ``node_cas`` maps each consortium node's
    agent id to the TLS CA certificate (PEM) of the organization that runs it (the
    genesis says which; a callable is asked each time, so a configuration change is
    followed), or to a tuple of CA certificates any of which may vouch for it (a node
    whose organization nobody told us: :func:`node_cas`). Such an agent speaks on a
    connection only if the TLS certificate under the channel names it and was issued
    by *its own* organization's CA (another member's CA cannot vouch for it) for a
    node: a certificate whose extended key usage does not allow serving (a user's,
    clientAuth only: :func:`agents.org.make_user_cert`) never proves a consortium
    node. Any other agent (a user) proves itself with its key alone; with
    ``member_cas`` (the current members' TLS CAs, asked each time) a certificate under
    it, if any, must have been issued by one of them: the TLS trust store only grows
    while a node runs, so this is what stops a removed member's machines at once."""
    current = node_cas if callable(node_cas) else (lambda cas=dict(node_cas): cas)

    def admit(agent: str, certificate: bytes | None) -> bool:
        cas = current().get(agent)
        if cas is None:
            if certificate is None or member_cas is None:
                return True
            try:
                cert = x509.load_der_x509_certificate(certificate)
            except ValueError:
                return False
            return _issued_by_any(cert, tuple(member_cas()))
        if certificate is None:
            return False
        try:
            cert = x509.load_der_x509_certificate(certificate)
            if agent not in certificate_agents(certificate) or not _may_serve(cert):
                return False
        except (ValueError, TypeError):
            return False
        return _issued_by_any(cert, cas if isinstance(cas, tuple) else (cas,))

    return admit


def _issued_by_any(cert: x509.Certificate, ca_pems: tuple[bytes | str, ...]) -> bool:
    for ca_pem in ca_pems:
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(_pem_bytes(ca_pem)))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _may_serve(cert: x509.Certificate) -> bool:
    """Whether a certificate may be a TLS server's: no extended key usage (any purpose, RFC
    5280) or one listing serverAuth. Node certificates serve and connect; a user's only connects."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.SERVER_AUTH in usages


def genesis_cas(config: Any) -> list[bytes]:
    """The member organizations' TLS CA certificates (PEM) a consortium configuration
    (``core.identity.ConsortiumConfig``) names: what a node or user trusts."""
    return [o.tls_ca.encode() for o in config.orgs if o.tls_ca]


def node_cas(config: Any, node_orgs: Mapping[str, str], others: Iterable[str] = ()) -> dict[str, Any]:
    """Which CA vouches for each consortium node, for :func:`admit_nodes`: a peer's
    organization's CA (the configuration says which); an orderer or storage node
    (``others``, and the configuration's orderers) its organization's CA when
    ``node_orgs`` (agent id -> organization id: the node configuration's
    ``[tls.orgs]``) names a member, else any member's CA (a tuple): the residual
    trust docs/security.md writes down."""
    by_org = {o.id: o.tls_ca.encode() for o in config.orgs if o.tls_ca}
    every = tuple(by_org.values())
    out: dict[str, Any] = {}
    for agent in [*config.orderer_ids, *others]:
        org = node_orgs.get(agent)
        out[agent] = by_org[org] if org in by_org else every
    for peer in config.peers:
        if peer.org in by_org:
            out[peer.id] = by_org[peer.org]
    return out


def _pem_bytes(pem: bytes | str) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem
