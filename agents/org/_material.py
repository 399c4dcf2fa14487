"""One organization's material on its own machine: keys, TLS, public profile.

Layout of an organization directory (:class:`OrgDir`)::

    DIR/profile.json          the public profile (OrgProfile): all another org needs
    DIR/keys/admin.keys       the org admin's ECDSA key: signs the consortium configuration
    DIR/keys/registrar.keys   the registrar's ECDSA key: signs enrollment tokens
    DIR/keys/<node>.keys      each node's AgentKeys (ECDSA, X25519)
    DIR/keys/tls-ca.keys      the TLS CA's private key (PKCS#8)
    DIR/keys/<node>.tls.keys  each node's TLS private key (PKCS#8)
    DIR/tls/ca.pem            the TLS CA certificate (public; also in the profile)
    DIR/tls/<node>.pem        each node's TLS certificate (public)

Every ``*.keys`` file is an :class:`agents.keys.KeyStore`, encrypted under the
passphrase or key file of an :class:`Unlock`; a key file inside DIR is refused
(it would sit beside what it protects), and so is a passphrase file there.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import ecdsa
from core.identity import check_id
from core.errors import DecodeError

from agents.errors import AgentError
from agents.keys import AgentKeys, KeyStore, KeyStoreError, atomic_write, read_passphrase_file
from agents.org import _tls
from agents.tls import check_ca_pem

PROFILE_VERSION = 1
ROLES = ("peer", "orderer", "storage")


class OrgError(AgentError):
    """Organization material cannot be made or read (message: what failed: why; what to do)."""


@dataclass(frozen=True)
class Unlock:
    """How an organization's key stores open: exactly one of a passphrase or a
    32-byte key file. ``fast_kdf``: Argon2id at its minimum cost (tests only)."""

    passphrase: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    fast_kdf: bool = False

    def __post_init__(self) -> None:
        if (self.passphrase is None) == (self.key_file is None):
            raise OrgError("unlocking keys: give exactly one of a passphrase or a key file; "
                           "use --passphrase-file or --key-file")

    @classmethod
    def from_files(cls, passphrase_file: Path | None, key_file: Path | None, *, fast_kdf: bool = False) -> "Unlock":
        if passphrase_file is not None and key_file is None:
            try:
                return cls(passphrase=read_passphrase_file(passphrase_file), fast_kdf=fast_kdf)
            except KeyStoreError as exc:
                raise OrgError(str(exc)) from None
        return cls(key_file=None if key_file is None else Path(key_file), fast_kdf=fast_kdf)

    def keystore(self, path: Path) -> KeyStore:
        return KeyStore(path, passphrase=self.passphrase, key_file=self.key_file, fast_kdf=self.fast_kdf)

    def check_outside(self, directory: Path, what: str, *, passphrase_file: Path | None = None) -> None:
        """Refuse a key file (or passphrase file) inside ``directory``: it would be stored beside the keys."""
        root = Path(directory).resolve()
        for label, path in (("key file", self.key_file), ("passphrase file", passphrase_file)):
            if path is None:
                continue
            resolved = Path(path).resolve()
            if resolved == root or root in resolved.parents:
                raise OrgError(f"{what}: the {label} {path} is inside {directory}, beside the keys it protects; "
                               f"keep it elsewhere (another disk, a secrets manager, a hardware token)")


@dataclass(frozen=True)
class NodeProfile:
    """A node as other organizations see it."""

    id: str
    role: str
    ecdsa_key: bytes
    box_key: bytes
    address: str
    tls_cert: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "ecdsa_key": self.ecdsa_key.hex(), "box_key": self.box_key.hex(),
                "address": self.address, "tls_cert": self.tls_cert}

    @classmethod
    def from_json(cls, d: Any) -> "NodeProfile":
        if not isinstance(d, dict):
            raise DecodeError("a node entry must be an object")
        node = cls(check_id(d.get("id"), "node id"), d.get("role"), _hex(d.get("ecdsa_key"), 33, "ECDSA key"),
                   _hex(d.get("box_key"), 32, "X25519 key"), d.get("address"), d.get("tls_cert", ""))
        if node.role not in ROLES:
            raise DecodeError(f"node {node.id}: role must be one of {', '.join(ROLES)}")
        if not isinstance(node.address, str) or not node.address.startswith("tcp://"):
            raise DecodeError(f"node {node.id}: address must be tcp://host:port")
        if not isinstance(node.tls_cert, str):
            raise DecodeError(f"node {node.id}: tls_cert must be PEM text")
        ecdsa.decode_public_key(node.ecdsa_key)
        return node


def _hex(value: Any, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise DecodeError(f"{what} must be hex") from None
    if len(raw) != size:
        raise DecodeError(f"{what} must be {size} bytes")
    return raw


def read_versioned(text: str | bytes, version: int, what: str) -> dict[str, Any]:
    """The JSON object of one of agents.org's files; DecodeError unless it is an object of
    ``version`` (``what``: "an organization profile", ...). Raises ValueError on bad JSON
    (nesting too deep for the parser included: these files come from other people)."""
    try:
        d = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(d, dict) or d.get("version") != version:
        raise DecodeError(f"not {what} of version {version}")
    return d


@dataclass(frozen=True)
class OrgProfile:
    """An organization's public profile (``profile.json``): its id and name, admin
    and registrar public keys, TLS CA certificate and nodes. No secret."""

    org: str
    name: str
    admin_key: bytes
    registrar_key: bytes
    tls_ca: str
    nodes: tuple[NodeProfile, ...]

    def nodes_with(self, role: str) -> list[NodeProfile]:
        return [n for n in self.nodes if n.role == role]

    def to_json(self) -> str:
        return json.dumps({"version": PROFILE_VERSION, "org": self.org, "name": self.name,
                           "admin_key": self.admin_key.hex(), "registrar_key": self.registrar_key.hex(),
                           "tls_ca": self.tls_ca, "nodes": [n.to_json() for n in self.nodes]}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "profile") -> "OrgProfile":
        try:
            d = read_versioned(text, PROFILE_VERSION, "an organization profile")
            nodes = d.get("nodes")
            if not isinstance(nodes, list):
                raise DecodeError("nodes must be a list")
            profile = cls(check_id(d.get("org"), "organization id"), d.get("name"),
                          _hex(d.get("admin_key"), 33, "admin key"), _hex(d.get("registrar_key"), 33, "registrar key"),
                          d.get("tls_ca", ""), tuple(NodeProfile.from_json(n) for n in nodes))
            if not isinstance(profile.name, str) or not profile.name or not isinstance(profile.tls_ca, str):
                raise DecodeError("name and tls_ca must be strings")
            if profile.tls_ca:
                check_ca_pem(profile.tls_ca)  # one CA certificate: what every member's nodes will trust
            if len({n.id for n in profile.nodes}) != len(profile.nodes):
                raise DecodeError("node ids must be distinct")
        except (ValueError, DecodeError) as exc:
            raise OrgError(f"reading {source}: {exc}; export it again with `emrshare org profile`") from None
        return profile


class OrgDir:
    """An organization directory (see the module docstring)."""

    def __init__(self, path: Path, unlock: Unlock | None = None):
        self.dir = Path(path)
        self.unlock = unlock

    @property
    def profile_path(self) -> Path:
        return self.dir / "profile.json"

    def exists(self) -> bool:
        return self.profile_path.exists()

    def profile(self) -> OrgProfile:
        try:
            text = self.profile_path.read_text()
        except FileNotFoundError:
            raise OrgError(f"reading the organization in {self.dir}: no profile.json there; "
                           f"create it with `emrshare org init --dir {self.dir}`") from None
        return OrgProfile.from_json(text, source=str(self.profile_path))

    def _store(self, name: str) -> KeyStore:
        if self.unlock is None:
            raise OrgError(f"opening keys in {self.dir}: no passphrase or key file given; "
                           "use --passphrase-file or --key-file")
        return self.unlock.keystore(self.dir / "keys" / name)

    def _load(self, name: str) -> bytes:
        try:
            return self._store(name).load()
        except FileNotFoundError:
            raise OrgError(f"opening {self.dir / 'keys' / name}: no such key store; "
                           "is this the organization directory `emrshare org init` made?") from None
        except KeyStoreError as exc:
            raise OrgError(f"opening the keys of {self.dir}: {exc}; give the passphrase or key file "
                           "`emrshare org init` was run with") from None

    def admin_key(self) -> bytes:
        """The org admin's ECDSA private key (signs consortium configurations)."""
        return self._load("admin.keys")

    def member_admin_key(self, config: Any, doing: str, *, member: str, document: str,
                         todo: str) -> tuple[str, bytes]:
        """This organization's id and admin key, checked against ``config`` (a ConsortiumConfig):
        the organization is in it and it names this admin key, else OrgError "<doing> for <org>:
        <org> is not <member>" or "...: the <document> names another admin key for <org>; <todo>"."""
        org = self.profile().org
        info = config.org(org)
        if info is None:
            raise OrgError(f"{doing} for {org}: {org} is not {member}")
        admin = self.admin_key()
        if ecdsa.public_key(admin) != info.admin_key:
            raise OrgError(f"{doing} for {org}: the {document} names another admin key for {org}; {todo}")
        return org, admin

    def registrar_key(self) -> bytes:
        """The registrar's ECDSA private key (signs enrollment tokens)."""
        return self._load("registrar.keys")

    def node_keys(self, node: str) -> AgentKeys:
        return AgentKeys.from_bytes(self._load(f"{node}.keys"))

    def tls_key_pem(self, node: str) -> bytes:
        """A node's TLS private key as unencrypted PEM, in memory (for an ``ssl`` context)."""
        return _tls.key_to_pem(self._load(f"{node}.tls.keys"))

    def tls_ca_pem(self) -> bytes:
        return (self.dir / "tls" / "ca.pem").read_bytes()

    def tls_cert_pem(self, node: str) -> bytes:
        return (self.dir / "tls" / f"{node}.pem").read_bytes()


def default_node_ids(org: str, peers: int, storage: int, orderer: bool) -> list[tuple[str, str]]:
    """(id, role) of an organization's nodes by default: ``peer-<org>-<n>``,
    ``storage-<org>-<n>``, ``orderer-<org>``."""
    out = [(f"peer-{org}-{i + 1}", "peer") for i in range(peers)]
    out += [(f"storage-{org}-{i + 1}", "storage") for i in range(storage)]
    if orderer:
        out.append((f"orderer-{org}", "orderer"))
    return out


def _host(address: str) -> str:
    rest = address.removeprefix("tcp://")
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    return host.strip("[]")


def init_org(path: Path, org: str, unlock: Unlock, *, nodes: list[tuple[str, str]], addresses: dict[str, str],
             name: str | None = None, node_keys: dict[str, AgentKeys] | None = None,
             now: datetime.datetime | None = None, passphrase_file: Path | None = None) -> OrgProfile:
    """Create an organization's material in ``path`` (see the module docstring):
    admin and registrar keys, ``nodes`` ((id, role) pairs) with their AgentKeys
    (given in ``node_keys`` or fresh), a TLS CA and one certificate per node whose
    SANs name its id and the host of its address (``addresses``: id -> tcp://host:port).
    Writes ``profile.json`` and returns the profile. OrgError if ``path`` already
    holds an organization or the key file is inside it."""
    what = f"creating organization {org} in {path}"
    try:
        check_id(org, "organization id")
        for node, role in nodes:
            check_id(node, "node id")
            if role not in ROLES:
                raise DecodeError(f"node {node}: role must be one of {', '.join(ROLES)}")
    except DecodeError as exc:
        raise OrgError(f"{what}: {exc}; choose ids of [A-Za-z0-9._:@-]") from None
    if len({n for n, _ in nodes}) != len(nodes):
        raise OrgError(f"{what}: node ids repeat; give each node its own id")
    missing = [n for n, _ in nodes if n not in addresses]
    if missing:
        raise OrgError(f"{what}: no address for {', '.join(missing)}; give --address ID=tcp://host:port")
    unlock.check_outside(path, what, passphrase_file=passphrase_file)
    directory = OrgDir(path, unlock)
    if directory.exists() or (directory.dir / "keys").exists():
        raise OrgError(f"{what}: it already holds an organization; choose an empty directory")
    directory.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory.dir, 0o700)
    (directory.dir / "keys").mkdir(mode=0o700, exist_ok=True)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    admin, registrar = ecdsa.generate_private_key(), ecdsa.generate_private_key()
    directory._store("admin.keys").save(admin)
    directory._store("registrar.keys").save(registrar)
    ca_key = _tls.new_key()
    ca_pem = _tls.make_ca(org, ca_key, now)
    directory._store("tls-ca.keys").save(_tls.key_to_der(ca_key))
    atomic_write(directory.dir / "tls" / "ca.pem", ca_pem, mode=0o644)
    profiles = []
    for node, role in nodes:
        keys = (node_keys or {}).get(node) or AgentKeys.generate()
        directory._store(f"{node}.keys").save(keys.to_bytes())
        tls_key = _tls.new_key()
        cert = _tls.make_node_cert(org, node, [_host(addresses[node])], tls_key, ca_pem, ca_key, now)
        directory._store(f"{node}.tls.keys").save(_tls.key_to_der(tls_key))
        atomic_write(directory.dir / "tls" / f"{node}.pem", cert, mode=0o644)
        profiles.append(NodeProfile(node, role, keys.ecdsa_public, keys.box_public, addresses[node], cert.decode()))
    profile = OrgProfile(org, name or org, ecdsa.public_key(admin), ecdsa.public_key(registrar), ca_pem.decode(),
                         tuple(profiles))
    atomic_write(directory.profile_path, profile.to_json().encode(), mode=0o644)
    return profile
