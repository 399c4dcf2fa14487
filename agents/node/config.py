"""A node's own configuration: one TOML file, every key overridable by environment.

``emrshare node start --config FILE`` runs ONE server agent (a peer, the
orderer or a storage node) from a file like::

    [node]
    id = "peer-a1"
    role = "peer"                          # peer | orderer | storage
    listen = "tcp://127.0.0.1:7101"        # the bus address it binds (default: loopback)
    genesis = "genesis.block"              # the genesis block (bytes), as the consortium built it
    keystore = "peer-a1.keys"              # agents.keys.KeyStore file holding AgentKeys.to_bytes()
    key_file = "peer-a1.key"               # unlocks it: a 32-byte key file, or passphrase_file,
    # passphrase_file = "/run/credentials/emrshare-peer.service/passphrase"
    data_dir = "data"                      # ledger / blob store
    metrics = "127.0.0.1:9464"             # optional: HTTP /metrics, /health, /status
    grace = 10.0                           # seconds in-flight work gets after SIGTERM/SIGINT
    enrolls = true                         # peers: enroll users (tokens checked against the genesis's registrar keys)
    ready_file = ""                        # optional: the pid is written here once the node serves

    [consortium]                           # what the genesis does not say
    storage = ["storage-1", "storage-2", "storage-3"]
    replicas = 3
    write_quorum = 2

    [routes]                               # bus address of every other server agent
    orderer = "tcp://10.0.0.5:7100"

    [keys]                                 # ECDSA public keys (hex) of agents the genesis does not
    storage-1 = "02ab..."                  # name (storage nodes)

    [orderer]                              # role settings (defaults as below)
    batch_size = 500
    batch_timeout = 0.03

    [storage]
    reconcile_interval = 30.0
    collect_grace = 900.0
    upload_timeout = 120.0

    [ordering]                             # orderer nodes of the genesis's orderer set (etcd ordering)
    kind = "etcd"                          # embedded (default) | etcd
    endpoints = ["http://10.0.0.5:2379", "http://10.0.0.6:2379", "http://10.0.0.7:2379"]
    window = 10000                         # recent blocks kept in etcd
    lease_ttl = 1                          # seconds: the leader's election lease
    [tls]                                  # mutual TLS 1.3 on the listen address and every link out
    cert = "tls/peer-a1.pem"               # this node's certificate, from its organization's TLS CA
    keystore = "keys/peer-a1.tls.keys"     # its private key (PKCS#8 in a KeyStore), unlocked by the
                                           # same key_file / passphrase_file / passphrase as [node]
    require_client_cert = true             # clients (users too) present a certificate of a member CA
    # enabled = false                      # plaintext: refused unless listen is loopback (tests)

    [tls.orgs]                             # optional: the organization of orderer and storage nodes
    storage-1 = "hospital-a"               # (the genesis places only peers); one not named here is
                                           # vouched for by any member's TLS CA

The node trusts the member organizations' TLS CAs the genesis names
(``OrgInfo.tls_ca``), never a file; a consortium node's certificate must name
it (URI SAN ``emrshare:agent:<id>``) and come from its organization's CA
(:func:`agents.tls.admit_nodes`). A configuration without ``[tls]`` is
refused; ``enabled = false`` is refused unless ``listen`` is loopback.

Relative paths are relative to the file's directory. Every key can be
overridden by an environment variable: ``EMRSHARE_NODE_<KEY>`` for the
``[node]`` table (``EMRSHARE_NODE_LISTEN``, ``EMRSHARE_NODE_KEY_FILE``, ...),
``EMRSHARE_NODE_<TABLE>__<KEY>`` for the others (``EMRSHARE_NODE_ORDERER__BATCH_SIZE``,
``EMRSHARE_NODE_ROUTES__ORDERER``, ``EMRSHARE_NODE_ORDERING__ENDPOINTS``; an agent id's ``-`` and ``.`` become ``_``,
and only ids the file names can be overridden). Values are parsed as the key's
type (numbers, lists as comma-separated text). The key store is unlocked by
exactly one of ``key_file``, ``passphrase_file`` or the passphrase itself in
``EMRSHARE_NODE_PASSPHRASE`` (never on the command line).

:func:`load_config` reads and checks the file (a :class:`NodeConfigError`, one
line, for anything missing or invalid); :meth:`NodeConfig.manifest` rebuilds
the :class:`agents.consortium.Manifest` the agents run with from the genesis,
the routes and the keys; :meth:`NodeConfig.unlock` opens the key store.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bus import BusError, parse_address
from core.errors import DecodeError
from core.ledger import parse_genesis

from agents.consortium import Manifest
from agents.errors import AgentError
from agents.keys import AgentKeys, KeyStore, KeyStoreError, read_passphrase_file

__all__ = ["NodeConfig", "NodeConfigError", "TlsSettings", "load_config", "render_config", "ENV_PREFIX", "ENV_PASSPHRASE",
           "ROLES", "is_loopback", "is_listen_address", "is_metrics_address"]

ENV_PREFIX = "EMRSHARE_NODE_"
ENV_PASSPHRASE = "EMRSHARE_NODE_PASSPHRASE"
"""The key store's passphrase itself (systemd: EnvironmentFile= with mode 0600)."""
ROLES = ("peer", "orderer", "storage")
MAX_CONFIG_BYTES = 1 << 20

# table -> key -> (type, default); None default: required (for [node]) or absent
_NODE_KEYS: dict[str, tuple[type, Any]] = {
    "id": (str, None), "role": (str, None), "listen": (str, "tcp://127.0.0.1:0"), "genesis": (str, None),
    "keystore": (str, None), "key_file": (str, ""), "passphrase_file": (str, ""), "data_dir": (str, None),
    "metrics": (str, ""), "grace": (float, 10.0), "enrolls": (bool, True), "ready_file": (str, ""),
}
_TABLE_KEYS: dict[str, dict[str, tuple[type, Any]]] = {
    "consortium": {"storage": (list, []), "replicas": (int, 3), "write_quorum": (int, 2)},
    "orderer": {"batch_size": (int, 500), "batch_timeout": (float, 0.03)},
    "peer": {"reply_cache": (int, 4096)},
    "storage": {"reconcile_interval": (float, 30.0), "collect_grace": (float, 900.0),
                "upload_timeout": (float, 120.0)},
    "ordering": {"kind": (str, "embedded"), "endpoints": (list, []), "window": (int, 10_000), "lease_ttl": (int, 1)},
}
ORDERING_KINDS = ("embedded", "etcd")
_MAPS = ("routes", "keys")  # free tables: agent id -> text
_TLS_KEYS: dict[str, tuple[type, Any]] = {
    "enabled": (bool, True), "cert": (str, ""), "keystore": (str, ""), "require_client_cert": (bool, True),
}


class NodeConfigError(AgentError):
    """A node's configuration, key store or genesis is missing or invalid (one line: why; what to do)."""


def _env_name(table: str, key: str) -> str:
    key = key.upper().replace("-", "_").replace(".", "_")
    return ENV_PREFIX + key if table == "node" else f"{ENV_PREFIX}{table.upper()}__{key}"


def _coerce(value: Any, typ: type, where: str) -> Any:
    if typ is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise NodeConfigError(f"{where} must be a list of names; fix it")
    if typ is str:
        if isinstance(value, str):
            return value
        raise NodeConfigError(f"{where} must be text; quote it")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise NodeConfigError(f"{where} must be true or false; fix it")
    if isinstance(value, bool) or (typ is int and isinstance(value, float) and not value.is_integer()):
        raise NodeConfigError(f"{where} must be {'a whole' if typ is int else 'a'} number; fix it")
    try:
        number = typ(value)
    except (TypeError, ValueError):
        raise NodeConfigError(f"{where} must be a number (got {value!r}); fix it") from None
    if typ is float and not (number == number and abs(number) != float("inf")):
        raise NodeConfigError(f"{where} must be a finite number; fix it")
    return number


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_listen_address(text: str) -> bool:
    """``tcp://HOST:PORT`` as the bus parses it, a port 0..65535 ([node] listen, ``node start --listen``)."""
    try:
        return parse_address(text).scheme == "tcp"
    except BusError:
        return False


def is_metrics_address(text: str) -> bool:
    """``HOST:PORT``, a port 0..65535 ([node] metrics, ``node start --metrics``)."""
    host, _, port = text.rpartition(":")
    return bool(host.strip("[]")) and port.isascii() and port.isdigit() and int(port) <= 65535


def _host_of(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.rpartition(":")[0]


@dataclass
class TlsSettings:
    """The ``[tls]`` table, checked (paths resolved): see the module docstring."""

    enabled: bool = True
    cert: Path | None = None
    keystore: Path | None = None
    require_client_cert: bool = True
    orgs: dict[str, str] = field(default_factory=dict)  # orderer / storage node id -> its organization


@dataclass
class NodeConfig:
    """A checked node configuration (paths resolved). Build with :func:`load_config`."""

    path: Path
    id: str
    role: str
    listen: str
    genesis: Path
    keystore: Path
    data_dir: Path
    key_file: Path | None = None
    passphrase_file: Path | None = None
    metrics: str = ""
    grace: float = 10.0
    enrolls: bool = True
    ready_file: Path | None = None
    storage: list[str] = field(default_factory=list)
    replicas: int = 3
    write_quorum: int = 2
    routes: dict[str, str] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)
    orderer: dict[str, Any] = field(default_factory=dict)
    storage_settings: dict[str, Any] = field(default_factory=dict)
    peer_settings: dict[str, Any] = field(default_factory=dict)  # [peer]: reply_cache
    ordering: dict[str, Any] = field(default_factory=dict)  # [ordering]: kind, endpoints, window, lease_ttl
    overridden: list[str] = field(default_factory=list)  # the environment variables that applied
    tls: TlsSettings = field(default_factory=lambda: TlsSettings(enabled=False))  # load_config: from [tls]

    @property
    def control_socket(self) -> Path:
        """The node's local status socket (HTTP over a Unix socket, mode 0600)."""
        return self.data_dir / "run" / "node.sock"

    @property
    def binds_non_loopback(self) -> bool:
        return not is_loopback(_host_of(self.listen))

    def genesis_bytes(self) -> bytes:
        try:
            raw = self.genesis.read_bytes()
        except OSError as exc:
            raise NodeConfigError(f"genesis {self.genesis}: {(exc.strerror or str(exc)).lower()}; "
                                  "check [node] genesis (EMRSHARE_NODE_GENESIS)") from None
        try:
            parse_genesis(raw)
        except (DecodeError, ValueError) as exc:
            raise NodeConfigError(f"genesis {self.genesis} is not a valid genesis block ({exc}); "
                                  "use the file the consortium built") from None
        return raw

    def manifest(self, genesis: bytes | None = None) -> Manifest:
        """The consortium as this node's agents see it: peers, orgs, orderer and threshold from the
        genesis; storage nodes, replicas and quorum from ``[consortium]``; addresses from ``[routes]``
        (and this node's own ``listen``); public keys from the genesis and ``[keys]``."""
        raw = self.genesis_bytes() if genesis is None else genesis
        config = parse_genesis(raw).config
        peer_orgs: dict[str, list[str]] = {o.id: [] for o in config.orgs}
        for p in config.peers:
            peer_orgs.setdefault(p.org, []).append(p.id)
        keys = {p.id: p.ecdsa_key for p in config.peers}
        keys[config.orderer_id] = config.orderer_key
        keys.update({o.id: o.key for o in config.orderers})
        for agent, key in self.keys.items():
            keys.setdefault(agent, key)
        agents = dict(self.routes)
        agents[self.id] = self.listen
        return Manifest(config.name, raw, config.orderer_id, [p.id for p in config.peers], list(self.storage),
                        config.threshold, agents, keys, peer_orgs, self.replicas, self.write_quorum)

    def check_role(self, manifest: Manifest) -> None:
        """The id names an agent of this role in the consortium, and its key is known; an orderer
        node of the genesis's orderer set orders on etcd (``[ordering] kind = "etcd"``), the
        embedded orderer does not."""
        orderer_set = [o.id for o in parse_genesis(manifest.genesis).config.orderers]
        orderers = orderer_set or [manifest.orderer]
        where = {"peer": manifest.peers, "orderer": orderers, "storage": manifest.storage}[self.role]
        if self.id not in where:
            raise NodeConfigError(f"{self.id!r} is not a {self.role} of consortium {manifest.consortium} "
                                  f"(its {self.role}s: {', '.join(where) or 'none'}); check [node] id and role")
        if self.id not in manifest.keys:
            raise NodeConfigError(f"no public key for {self.id!r}; add it to [keys]")
        etcd = self.ordering.get("kind") == "etcd"
        if self.role == "orderer" and orderer_set and not etcd:
            raise NodeConfigError(f"{self.id!r} is a node of the genesis's orderer set, which orders on etcd; "
                                  'add [ordering] kind = "etcd" with the cluster\'s endpoints')
        if self.role == "orderer" and not orderer_set and etcd:
            raise NodeConfigError(f"the genesis of {manifest.consortium} has no orderer set: {self.id!r} is its "
                                  'embedded orderer; remove [ordering] kind = "etcd"')

    def unlock(self) -> AgentKeys:
        """The node's keys from its key store, unlocked by the one secret configured."""
        try:
            return AgentKeys.from_bytes(self._open(self.keystore, "[node] keystore"))
        except (ValueError, DecodeError) as exc:
            raise NodeConfigError(f"key store {self.keystore} does not hold a node's keys ({exc}); "
                                  "check [node] keystore") from None

    def tls_material(self) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PKCS#8 DER) of ``[tls]``, the key unlocked by the same secret
        as the node's key store."""
        assert self.tls.enabled and self.tls.cert is not None and self.tls.keystore is not None
        try:
            cert = self.tls.cert.read_bytes()
        except OSError as exc:
            raise NodeConfigError(f"TLS certificate {self.tls.cert}: {(exc.strerror or str(exc)).lower()}; "
                                  "check [tls] cert") from None
        return cert, self._open(self.tls.keystore, "[tls] keystore")

    def _open(self, path: Path, where: str) -> bytes:
        passphrase = os.environ.get(ENV_PASSPHRASE) or None
        given = [n for n, v in (("key_file", self.key_file), ("passphrase_file", self.passphrase_file),
                                (ENV_PASSPHRASE, passphrase)) if v]
        if len(given) != 1:
            why = "nothing unlocks the key store" if not given else f"{' and '.join(given)} are both given"
            raise NodeConfigError(f"{why}; give exactly one of [node] key_file, [node] passphrase_file or "
                                  f"{ENV_PASSPHRASE}")
        if not path.is_file():
            raise NodeConfigError(f"key store {path}: no such file; check {where}")
        if self.passphrase_file is not None:
            try:
                passphrase = read_passphrase_file(self.passphrase_file)
            except KeyStoreError as exc:
                raise NodeConfigError(str(exc)) from None
        if self.key_file is not None and not self.key_file.is_file():
            raise NodeConfigError(f"key file {self.key_file}: no such file; check [node] key_file")
        store = (KeyStore(path, key_file=self.key_file) if self.key_file is not None
                 else KeyStore(path, passphrase=passphrase))
        try:
            return store.load()
        except KeyStoreError as exc:
            raise NodeConfigError(f"{exc}; check the key file or passphrase") from None



def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise NodeConfigError(f"{path}: {(exc.strerror or str(exc)).lower()}; check the path") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise NodeConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; give the node's config file")
    try:
        return tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NodeConfigError(f"{path} is not valid TOML ({exc}); fix the file") from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, override (environment) and check a node configuration."""
    path = Path(path)
    env = os.environ if environ is None else environ
    doc = _read(path)
    unknown = set(doc) - {"node", *_TABLE_KEYS, *_MAPS, "tls"}
    if unknown:
        raise NodeConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; "
                              f"the tables are node, {', '.join([*_TABLE_KEYS, *_MAPS, 'tls'])}")
    for table in doc:
        if not isinstance(doc[table], dict):
            raise NodeConfigError(f"{path}: {table} is not a table; write [{table}]")
    overridden: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    for table, spec in (("node", _NODE_KEYS), *_TABLE_KEYS.items()):
        given = dict(doc.get(table, {}))
        extra = set(given) - set(spec)
        if extra:
            raise NodeConfigError(f"{path}: unknown key(s) in [{table}]: {', '.join(sorted(extra))}; "
                                  "see docs/deploy.md")
        out: dict[str, Any] = {}
        for key, (typ, default) in spec.items():
            var = _env_name(table, key)
            if env.get(var):
                value, where = env[var], var
                overridden.append(var)
            elif key in given:
                value, where = given[key], f"[{table}] {key} in {path}"
            else:
                if default is None:
                    raise NodeConfigError(f"{path}: [{table}] {key} is missing; add it, or set {var}")
                out[key] = default
                continue
            out[key] = _coerce(value, typ, where)
        values[table] = out
    maps: dict[str, dict[str, str]] = {}
    for table in _MAPS:
        given = doc.get(table, {})
        out = {}
        for key, value in given.items():
            var = _env_name(table, key)
            if env.get(var):
                value = env[var]
                overridden.append(var)
            out[key] = _coerce(value, str, f"[{table}] {key} in {path}")
        maps[table] = out
    node = values["node"]
    base = path.resolve().parent

    def at(text: str) -> Path | None:
        return (base / os.path.expanduser(text)).resolve() if text else None

    if node["role"] not in ROLES:
        raise NodeConfigError(f"{path}: [node] role is {node['role']!r}; use one of {', '.join(ROLES)}")
    if not is_listen_address(node["listen"]):
        raise NodeConfigError(f"{path}: [node] listen is {node['listen']!r}; write tcp://HOST:PORT "
                              "(a port 0..65535)")
    if node["metrics"] and not is_metrics_address(node["metrics"]):
        raise NodeConfigError(f"{path}: [node] metrics is {node['metrics']!r}; write HOST:PORT "
                              "(e.g. 127.0.0.1:9464, a port 0..65535)")
    if not node["grace"] >= 0:
        raise NodeConfigError(f"{path}: [node] grace must be >= 0 seconds; fix it")
    keys: dict[str, bytes] = {}
    for agent, text in maps["keys"].items():
        try:
            keys[agent] = bytes.fromhex(text)
        except ValueError:
            raise NodeConfigError(f"{path}: [keys] {agent} is not hex; copy the public key again") from None
    cons = values["consortium"]
    if not 1 <= cons["write_quorum"] <= cons["replicas"]:
        raise NodeConfigError(f"{path}: [consortium] needs 1 <= write_quorum <= replicas; fix them")
    if values["orderer"]["batch_size"] < 1 or values["orderer"]["batch_timeout"] <= 0:
        raise NodeConfigError(f"{path}: [orderer] batch_size and batch_timeout must be positive; fix them")
    if values["peer"]["reply_cache"] < 0:
        raise NodeConfigError(f"{path}: [peer] reply_cache must be >= 0 (0: no reply cache); fix it")
    _check_ordering(path, values["ordering"], node["role"])
    return NodeConfig(
        path=path, id=node["id"], role=node["role"], listen=node["listen"], genesis=at(node["genesis"]),
        keystore=at(node["keystore"]), data_dir=at(node["data_dir"]), key_file=at(node["key_file"]),
        passphrase_file=at(node["passphrase_file"]), metrics=node["metrics"], grace=node["grace"],
        enrolls=node["enrolls"], ready_file=at(node["ready_file"]),
        storage=cons["storage"], replicas=cons["replicas"], write_quorum=cons["write_quorum"],
        routes=maps["routes"], keys=keys, orderer=values["orderer"], storage_settings=values["storage"],
        peer_settings=values["peer"],
        ordering=values["ordering"], overridden=overridden,
        tls=_tls(path, doc.get("tls"), env, overridden, at, node["listen"]),
    )


def _check_ordering(path: Path, ordering: dict[str, Any], role: str) -> None:
    """``[ordering]``: a known kind; etcd only for an orderer, with the cluster's http:// client URLs."""
    kind = ordering["kind"]
    if kind not in ORDERING_KINDS:
        raise NodeConfigError(f"{path}: [ordering] kind is {kind!r}; use {' or '.join(ORDERING_KINDS)}")
    if ordering["window"] < 1 or ordering["lease_ttl"] < 1:
        raise NodeConfigError(f"{path}: [ordering] window and lease_ttl must be >= 1; fix them")
    if kind != "etcd":
        return
    if role != "orderer":
        raise NodeConfigError(f'{path}: [ordering] kind = "etcd" is for orderer nodes, this is a {role}; '
                              "remove [ordering]")
    endpoints = ordering["endpoints"]
    if not endpoints:
        raise NodeConfigError(f"{path}: [ordering] endpoints is missing; list the etcd cluster's client URLs "
                              f"(http://HOST:PORT), or set {_env_name('ordering', 'endpoints')}")
    for i, url in enumerate(endpoints):
        host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
        if not url.startswith("http://") or not host or not (port.isascii() and port.isdigit()):
            raise NodeConfigError(f"{path}: [ordering] endpoint {url!r} is not http://HOST:PORT; write the etcd "
                                  "members' client URLs (TLS to etcd is not supported yet)")
        endpoints[i] = url.rstrip("/")  # the client appends /v3/...


def _tls(path: Path, given: dict[str, Any] | None, env: Mapping[str, str], overridden: list[str], at: Any,
         listen: str) -> TlsSettings:
    """The checked ``[tls]`` table (see the module docstring)."""
    given = dict(given or {})
    orgs_given = given.pop("orgs", {})
    if not isinstance(orgs_given, dict):
        raise NodeConfigError(f"{path}: [tls] orgs is not a table; write [tls.orgs] with id = \"org\" lines")
    extra = set(given) - set(_TLS_KEYS)
    if extra:
        raise NodeConfigError(f"{path}: unknown key(s) in [tls]: {', '.join(sorted(extra))}; "
                              f"the keys are {', '.join(_TLS_KEYS)} and the table [tls.orgs]")
    out: dict[str, Any] = {}
    present = bool(given)
    for key, (typ, default) in _TLS_KEYS.items():
        var = _env_name("tls", key)
        if env.get(var):
            value, where = env[var], var
            overridden.append(var)
            present = True
        elif key in given:
            value, where = given[key], f"[tls] {key} in {path}"
        else:
            out[key] = default
            continue
        out[key] = _coerce(value, typ, where)
    orgs: dict[str, str] = {}
    for agent, org in orgs_given.items():
        var = f"{ENV_PREFIX}TLS__ORGS__{agent.upper().replace('-', '_').replace('.', '_')}"
        if env.get(var):
            org = env[var]
            overridden.append(var)
        orgs[agent] = _coerce(org, str, f"[tls.orgs] {agent} in {path}")
    loopback = is_loopback(_host_of(listen))
    if not present and not orgs_given:
        raise NodeConfigError(f"{path}: no [tls] table; add [tls] with cert and keystore (`emrshare org node-config` "
                              "writes it), or enabled = false for a loopback-only test node")
    if not out["enabled"]:
        if not loopback:
            raise NodeConfigError(f"{path}: [tls] enabled = false with listen {listen}, outside loopback; "
                                  "give the node its TLS certificate and key ([tls] cert, keystore)")
        return TlsSettings(enabled=False, require_client_cert=out["require_client_cert"], orgs=orgs)
    for key in ("cert", "keystore"):
        if not out[key]:
            raise NodeConfigError(f"{path}: [tls] {key} is missing; add it (the node's TLS "
                                  f"{'certificate' if key == 'cert' else 'key store'}), or set {_env_name('tls', key)}")
    return TlsSettings(enabled=True, cert=at(out["cert"]), keystore=at(out["keystore"]),
                       require_client_cert=out["require_client_cert"], orgs=orgs)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def render_config(tables: Mapping[str, Mapping[str, Any]], comment: str = "") -> str:
    """A TOML document of ``tables`` (table -> key -> text, number or list of text)."""
    lines = [f"# {line}" for line in comment.splitlines()] + ([""] if comment else [])
    for table, entries in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entries.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
