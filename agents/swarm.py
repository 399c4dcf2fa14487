"""The local agent swarm: a consortium on one machine (the embedded default).

``emrshare swarm up`` launches n peers of k hospitals (default 4 peers, 2
hospitals, threshold 2 of 4), an ordering service and 3 storage nodes. Either
all agents run in this process on one bus node (the default; the node also
listens on loopback TCP so CLI commands in other processes can reach it), or
each agent runs in its own process on its own loopback TCP port
(``--processes``). State lives under the data directory::

    DIR/swarm.json          the spec the swarm was created with
    DIR/manifest.json       addresses, public keys, genesis (what clients need)
    DIR/orgs/<org>/         each hospital's organization directory, made by the same
                            function as `emrshare org init` (agents.org): its admin,
                            registrar and node keys (its peers, and the orderer and
                            storage nodes placed in it round-robin), TLS CA and node
                            certificates, profile
    DIR/secrets/<org>.key   the key file that unlocks DIR/orgs/<org>/keys (held by the
                            swarm: one operator runs every hospital here)
    DIR/secrets/swarm.key   the key file of the swarm's own key stores (mode 0600):
                            DIR/secrets/tls-users/<subject>.keys, each swarm user's TLS
                            client certificate and key (:meth:`SwarmFiles.client_tls`),
                            and, in directories made before the orderer and storage
                            nodes had organizations, their keys
    DIR/agents/<id>/        each agent's ledger/blob store (a storage node's
                            status.json: its reconciler's view, agents.storage.reconcile)
    DIR/users/<subject>/    patients' and doctors' own directories (CLI)
    DIR/logs/<id>.log       per-process logs (--processes)
    DIR/nodes/<id>.toml     each node process's configuration (--processes: every agent
                            process is ``emrshare node start --config DIR/nodes/<id>.toml``,
                            agents.node), DIR/genesis.block the genesis it names
    DIR/run/swarm.lock      held (flock) by the process running the swarm; it
                            names that process (pid, start time, mode)

With ``--processes`` every link is mutual TLS 1.3 (:mod:`agents.tls`): each node
process has its organization's certificate (DIR/nodes/<id>.toml's ``[tls]``), and
every client of the swarm (the CLI's users, the load test, the swarm's own bus node)
presents a client certificate the swarm mints from the user's hospital's TLS CA
(:meth:`SwarmFiles.client_tls`). The in-process swarm stays plaintext (one process,
loopback). With ``--processes`` on Linux, each agent process (:mod:`agents.node.service`) asks the kernel for SIGTERM
when the process that started it dies (``PR_SET_PDEATHSIG``), so even a
SIGKILLed ``swarm up`` leaves no agent behind.

The swarm's process runs :func:`agents.gcpolicy.gc_keeper` once its agents
are up (in-process: every agent shares that interpreter's collector; with
``--processes``: for its own clients, each node process runs its own): the
start-up state and the survivors of each full collection are frozen, so a
full collection's pause stays short as ledger state and caches grow.

Every storage node runs a reconciler (:mod:`agents.storage.reconcile`) every
``reconcile_interval`` seconds: committed blobs get their r copies back, blobs
no committed transaction names are collected after ``collect_grace``.

With ``ordering="etcd"`` (``swarm up --ordering etcd``) the ordering service is
``orderer_nodes`` etcd orderer nodes (``orderer-1``, ...; the genesis names them
as its orderer set, :mod:`agents.ordering`) over a local ``etcd_members``-member
etcd cluster that the swarm starts as child processes (data and logs in
DIR/etcd/, loopback ports kept in DIR/etcd/cluster.json) and stops with it;
with ``--processes`` each orderer node is ``emrshare node start`` too, its
config's ``[ordering]`` table naming the cluster.

Starting again with the same directory resumes: same keys, same genesis, same
ledgers and blobs. A directory runs one swarm at a time: :meth:`Swarm.open`
holds the lock while the swarm runs and raises :class:`SwarmRunning` if
another process holds it (:meth:`SwarmFiles.running` says who).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from bus import Node, open_node
from core.identity import ConsortiumConfig, OrdererInfo, OrgInfo, PeerInfo
from core.ledger import MAX_BLOCK_TXS, make_genesis, parse_genesis

from agents import org as orgs_
from agents.consortium import Manifest, enrollment_token
from agents.errors import AgentError
from agents.gcpolicy import gc_keeper
from agents.keys import AgentKeys, KeyStore, atomic_write
from agents.ports import free_port

log = logging.getLogger("agents.swarm")

ORDERER_ID = "orderer"
LOCK_NAME = "swarm.lock"


class AgentStartError(AgentError):
    """An agent process of the swarm exited, or did not report ready in time, while starting."""


class SwarmRunning(AgentError):
    """The data directory's swarm is already running in another process (``holder``: its lock record)."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


@dataclass
class SwarmSpec:
    data_dir: Path
    hospitals: int = 2
    peers: int = 4
    threshold: int = 2
    storage_nodes: int = 3
    replicas: int = 3
    write_quorum: int = 2
    processes: bool = False
    host: str = "127.0.0.1"
    port: int = 0  # in-process mode: the node's TCP port (0: any free port)
    batch_size: int = 500
    batch_timeout: float = 0.03
    consortium: str = "emrshare-local"
    reconcile_interval: float = 30.0  # storage nodes: seconds between reconcile rounds
    collect_grace: float = 900.0  # storage nodes: seconds an unnamed blob is kept (put-to-commit window)
    upload_timeout: float = 120.0  # storage nodes: a put session idle this long is aborted
    ordering: str = "embedded"  # or "etcd": orderer nodes over a local etcd cluster (agents.ordering)
    orderer_nodes: int = 2  # etcd ordering: orderer nodes
    etcd_members: int = 3  # etcd ordering: etcd cluster members
    etcd_window: int = 10_000  # etcd ordering: recent blocks kept in etcd
    reply_cache: int = 4096  # peers: signed re-encryption replies kept for repeat reads (0: none)

    def check(self) -> None:
        for name, default in asdict(SwarmSpec(data_dir=self.data_dir)).items():
            value, kind = getattr(self, name), type(default)
            if name != "data_dir" and not (type(value) is kind or kind is float and type(value) is int):
                raise ValueError(f"{name} must be {_KINDS.get(kind, kind.__name__)}, not {value!r}")
        check_port(self.port)
        if not 1 <= self.batch_size <= MAX_BLOCK_TXS or not self.batch_timeout > 0:
            raise ValueError(f"batch size must be 1..{MAX_BLOCK_TXS} transactions and the batch timeout positive")
        if self.hospitals < 1:
            raise ValueError("need at least one hospital")
        if self.peers < self.hospitals:
            raise ValueError("need at least one peer per hospital")
        if not 1 <= self.threshold <= self.peers:
            raise ValueError(f"threshold must be between 1 and the number of peers ({self.peers})")
        if self.storage_nodes < 1:
            raise ValueError("need at least one storage node")
        if not 1 <= self.write_quorum <= self.replicas:
            raise ValueError("need 1 <= write quorum <= replicas")
        if self.replicas > self.storage_nodes:
            raise ValueError(f"replicas ({self.replicas}) exceed storage nodes ({self.storage_nodes})")
        if not (self.reconcile_interval > 0 and self.collect_grace >= 0 and self.upload_timeout > 0):
            raise ValueError("reconcile interval and upload timeout must be positive, collect grace non-negative")
        if self.reply_cache < 0:
            raise ValueError("the peers' reply cache must be >= 0 replies (0: none)")
        if self.ordering not in ("embedded", "etcd"):
            raise ValueError(f"ordering must be embedded or etcd, not {self.ordering!r}")
        if self.ordering == "etcd" and not (1 <= self.orderer_nodes <= 16 and self.etcd_members in (1, 3, 5)
                                            and self.etcd_window >= 1):
            raise ValueError("etcd ordering needs 1..16 orderer nodes, 1, 3 or 5 etcd members and a window >= 1")

    def to_json(self) -> str:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, d: dict[str, Any], data_dir: Path) -> "SwarmSpec":
        known = {f for f in cls.__dataclass_fields__ if f != "data_dir"}
        unknown = set(d) - known - {"data_dir"}
        if unknown:
            raise ValueError(f"unknown swarm settings: {', '.join(sorted(unknown))}")
        return cls(data_dir=data_dir, **{k: v for k, v in d.items() if k in known})


_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def check_port(port: object) -> None:
    """An in-process swarm's bus port: 0..65535 (0: any free port), else ValueError."""
    if not (type(port) is int and 0 <= port <= 65535):
        raise ValueError(f"port must be 0..65535 (0: any free port), not {port!r}")


def _log_tail(path: Path, lines: int = 5, limit: int = 2000) -> str:
    """The last lines of an agent's log, indented, for an error that names the log: where the log
    is gone by the time someone reads the error (a CI run's temporary directory), the cause stays."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    {line}" for line in tail)


def org_ids(n: int) -> list[str]:
    return [f"hospital-{chr(ord('a') + i)}" if n <= 26 else f"hospital-{i + 1}" for i in range(n)]


class SwarmFiles:
    """Reading and creating a swarm's data directory."""

    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir).resolve()
        self.secrets = self.dir / "secrets"
        self.key_file = self.secrets / "swarm.key"

    @property
    def exists(self) -> bool:
        return (self.dir / "manifest.json").exists()

    @property
    def lock_path(self) -> Path:
        return self.dir / "run" / LOCK_NAME

    @contextlib.contextmanager
    def lock(self, **info: Any):
        """Hold the directory's lock while the block runs (SwarmRunning if another process holds it);
        the lock file records this process's pid, start time and ``info``."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.running() or {}
            pid = holder.get("pid")
            raise SwarmRunning(f"the swarm in {self.dir} is already running"
                               + (f" (pid {pid})" if pid else ""), holder) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.time(), **info}).encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the flock

    def running(self) -> dict[str, Any] | None:
        """The lock record of the process running this directory's swarm, or None if none runs."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = os.pread(fd, 4096, 0)
                try:
                    record = json.loads(raw) if raw else {}
                except ValueError:
                    record = {}
                return record if isinstance(record, dict) else {}
            return None
        finally:
            os.close(fd)

    def keystore(self, agent: str) -> KeyStore:
        return KeyStore(self.secrets / f"{agent}.keys", key_file=self.key_file)

    def org_dir(self, org: str) -> "orgs_.OrgDir":
        """Hospital ``org``'s organization directory, unlocked by the key file the swarm holds."""
        return orgs_.OrgDir(self.dir / "orgs" / org, orgs_.Unlock(key_file=self.secrets / f"{org}.key"))

    def orgs(self) -> list[str]:
        return list(self.manifest().peer_orgs)

    def node_orgs(self) -> dict[str, str]:
        """Every node's organization (node id -> org id), from the organizations' profiles."""
        out: dict[str, str] = {}
        for org in self.orgs():
            path = self.dir / "orgs" / org / "profile.json"
            out.update({n.id: org for n in orgs_.OrgProfile.from_json(path.read_text(), source=str(path)).nodes})
        return out

    def node_org(self, agent: str) -> str | None:
        return self.node_orgs().get(agent)

    def agent_keys(self, agent: str) -> AgentKeys:
        org = self.node_org(agent)
        if org is not None:
            return self.org_dir(org).node_keys(agent)
        return AgentKeys.from_bytes(self.keystore(agent).load())

    def uses_tls(self) -> bool:
        """Whether the swarm's nodes speak TLS: a ``--processes`` swarm does, the in-process one not."""
        return self.spec().processes

    def trusted_cas(self) -> list[bytes]:
        from agents.tls import genesis_cas

        return genesis_cas(parse_genesis(self.manifest().genesis).config)

    def client_tls(self, subject: str, org: str | None = None) -> Any:
        """The bus ``tcp`` transport a swarm user ``subject`` connects with: mutual TLS with a client
        certificate from ``org``'s TLS CA (default: the first hospital), minted once and kept in
        DIR/secrets/tls-users/<subject>.keys (encrypted under the swarm's key file) until it nears
        its end or the organization changes; None for the in-process swarm (plaintext). The
        certificate also names the swarm's host, so a user that listens (``patient serve``) serves
        TLS with it."""
        if not self.uses_tls():
            return None
        from cryptography import x509

        from agents.tls import tls_transport

        known = self.orgs()
        org = org if org in known else known[0]
        store = KeyStore(self.secrets / "tls-users" / f"{subject}.keys", key_file=self.key_file)
        cert = key = None
        if store.path.exists():
            saved = json.loads(store.load())
            fresh = x509.load_pem_x509_certificate(saved["cert"].encode()).not_valid_after_utc.timestamp() \
                > time.time() + 86400
            if saved.get("org") == org and fresh:
                cert, key = saved["cert"].encode(), bytes.fromhex(saved["key"])
        if cert is None or key is None:
            cert, key = orgs_.user_tls(self.org_dir(org), subject, hosts=[self.spec().host])
            store.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            store.save(json.dumps({"org": org, "cert": cert.decode(), "key": key.hex()}).encode())
        return tls_transport(cert, orgs_.key_to_pem(key), self.trusted_cas())

    def manifest(self) -> Manifest:
        return Manifest.from_json((self.dir / "manifest.json").read_text())

    def spec(self) -> SwarmSpec:
        d = json.loads((self.dir / "swarm.json").read_text())
        d.pop("data_dir", None)
        return SwarmSpec.from_mapping(d, self.dir)

    def agent_dir(self, agent: str) -> Path:
        return self.dir / "agents" / agent

    def user_dir(self, subject: str) -> Path:
        return self.dir / "users" / subject

    def token(self, subject: str, org: str, attributes: dict[str, Any], enrolling: str) -> bytes:
        """The registrar's enrollment token for ``subject`` enrolling from ``enrolling``
        (the agent's ``enroll_id``), signed with ``org``'s registrar key: :func:`agents.enrollment_token`."""
        known = self.orgs()
        if org not in known:
            raise ValueError(f"unknown organization {org!r}; this swarm has {', '.join(known)}")
        return enrollment_token(self.org_dir(org).registrar_key(), subject, org, attributes, enrolling)

    def write_manifest(self, manifest: Manifest) -> None:
        atomic_write(self.dir / "manifest.json", manifest.to_json().encode(), mode=0o644)

    def create(self, spec: SwarmSpec, now: float | None = None) -> Manifest:
        """Generate keys, the genesis and the manifest for a new swarm."""
        spec.check()
        self.secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)
        if not self.key_file.exists():
            KeyStore.create_key_file(self.key_file)
        orgs = org_ids(spec.hospitals)
        peer_ids: list[tuple[str, str]] = []
        peer_orgs: dict[str, list[str]] = {org: [] for org in orgs}
        for i in range(spec.peers):
            org = orgs[i % len(orgs)]
            pid = f"peer-{org.removeprefix('hospital-')}{len(peer_orgs[org]) + 1}"
            peer_ids.append((pid, org))
            peer_orgs[org].append(pid)
        orderers = ([f"orderer-{i + 1}" for i in range(spec.orderer_nodes)] if spec.ordering == "etcd"
                    else [ORDERER_ID])
        storage = [f"storage-{i + 1}" for i in range(spec.storage_nodes)]
        # orderer and storage nodes belong to the hospitals too, round-robin (their TLS certificates)
        placed: dict[str, list[tuple[str, str]]] = {org: [(p, "peer") for p in peer_orgs[org]] for org in orgs}
        for i, oid in enumerate(orderers):
            placed[orgs[i % len(orgs)]].append((oid, "orderer"))
        for i, sid in enumerate(storage):
            placed[orgs[i % len(orgs)]].append((sid, "storage"))
        all_agents = [*orderers, *(p for p, _ in peer_ids), *storage]
        if spec.processes:
            addresses = {a: f"tcp://{spec.host}:{free_port(spec.host)}" for a in all_agents}
        else:
            addresses = {a: f"tcp://{spec.host}:{spec.port}" for a in all_agents}
        # each hospital's material through the same function as `emrshare org init`
        agents: dict[str, AgentKeys] = {a: AgentKeys.generate() for a in [*orderers, *storage]}
        profiles = {}
        for org in orgs:
            unlock = orgs_.Unlock(key_file=self.secrets / f"{org}.key")
            if not unlock.key_file.exists():
                KeyStore.create_key_file(unlock.key_file)
            profiles[org] = orgs_.init_org(self.dir / "orgs" / org, org, unlock,
                                           nodes=placed[org], addresses=addresses, node_keys=agents,
                                           name=f"Hospital {org.removeprefix('hospital-').upper()}")
        nodes = {n.id: n for p in profiles.values() for n in p.nodes}
        peers = [PeerInfo(pid, org, nodes[pid].ecdsa_key, nodes[pid].box_key, i + 1)
                 for i, (pid, org) in enumerate(peer_ids)]
        created = int((now if now is not None else time.time()) * 1000)
        config = ConsortiumConfig(
            spec.consortium,
            tuple(OrgInfo(o, p.name, p.admin_key, p.registrar_key, p.tls_ca) for o, p in profiles.items()),
            tuple(peers), orderers[0], agents[orderers[0]].ecdsa_public, spec.threshold, created_at=created,
            orderers=tuple(OrdererInfo(o, agents[o].ecdsa_public) for o in orderers) if spec.ordering == "etcd" else (),
        )
        genesis = make_genesis(config, {}).to_bytes()
        for org in orgs:  # every hospital signs, as `emrshare consortium sign` does
            genesis = orgs_.sign_draft(genesis, self.org_dir(org))
        genesis = orgs_.seal(genesis).block
        keys = {a: k.ecdsa_public for a, k in agents.items()}
        keys.update({pid: nodes[pid].ecdsa_key for pid, _ in peer_ids})
        manifest = Manifest(
            spec.consortium, genesis.to_bytes(), orderers[0], [p.id for p in peers], storage,
            spec.threshold, addresses, keys, peer_orgs,
            spec.replicas, spec.write_quorum,
        )
        if spec.ordering == "etcd":
            etcd_dir = self.dir / "etcd"
            etcd_dir.mkdir(parents=True, exist_ok=True)
            ports = {"client": [free_port(spec.host) for _ in range(spec.etcd_members)],
                     "peer": [free_port(spec.host) for _ in range(spec.etcd_members)]}
            atomic_write(etcd_dir / "cluster.json", json.dumps(ports).encode(), mode=0o644)
        atomic_write(self.dir / "swarm.json", spec.to_json().encode(), mode=0o644)
        self.write_manifest(manifest)
        return manifest

    def etcd_cluster(self, spec: SwarmSpec) -> Any:
        """The swarm's etcd cluster (not started): :class:`agents.ordering.EtcdCluster` on its saved ports."""
        from agents.ordering import EtcdCluster

        ports = json.loads((self.dir / "etcd" / "cluster.json").read_text())
        return EtcdCluster(self.dir / "etcd", members=spec.etcd_members, host=spec.host,
                           client_ports=ports["client"], peer_ports=ports["peer"])


# ------------------------------------------------------------------ running agents


async def run_server_agent(files: SwarmFiles, agent: str, node: Node, manifest: Manifest,
                           *, runners: dict[str, Any] | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one server agent (orderer, peer or storage node) on ``node`` (the in-process swarm;
    node processes run the same :func:`agents.node.build_agent` through ``emrshare node start``).
    ``runners``, if given, receives the agent's :class:`agents.node.RoleAgent` (its metrics)."""
    from agents.node.roles import RoleSettings, build_agent, role_of

    spec = files.spec()
    role = role_of(agent, manifest)
    etcd = tuple(files.etcd_cluster(spec).endpoints) if spec.ordering == "etcd" else ()
    settings = RoleSettings(batch_size=spec.batch_size, batch_timeout=spec.batch_timeout,
                            reconcile_interval=spec.reconcile_interval, collect_grace=spec.collect_grace,
                            upload_timeout=spec.upload_timeout, etcd_endpoints=etcd, etcd_window=spec.etcd_window,
                            reply_cache=spec.reply_cache)
    runner = build_agent(agent, role, files.agent_keys(agent), manifest, files.agent_dir(agent), settings)
    if runners is not None:
        runners[agent] = runner
    await runner.run(node, task_status=task_status)


def orderer_agents(manifest: Manifest) -> list[str]:
    """The ordering service's agents: the embedded orderer, or the etcd orderer nodes."""
    return list(parse_genesis(manifest.genesis).config.orderer_ids)


def server_agents(manifest: Manifest) -> list[str]:
    """Start order: the orderer (nodes), then peers, then storage nodes."""
    return [*orderer_agents(manifest), *manifest.peers, *manifest.storage]


class Swarm:
    """A running swarm. Use :meth:`open` (async context manager)."""

    def __init__(self, files: SwarmFiles, spec: SwarmSpec, manifest: Manifest, node: Node | None):
        self.files = files
        self.spec = spec
        self.manifest = manifest
        self.node = node  # the in-process bus node (None with --processes)
        self.processes: dict[str, subprocess.Popen] = {}
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}
        self.runners: dict[str, Any] = {}  # in-process agents: id -> agents.node.RoleAgent (metrics)
        self.etcd: Any = None  # etcd ordering: the running agents.ordering.EtcdCluster

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, spec: SwarmSpec, *, fresh: bool = False, port: int | None = None) -> AsyncIterator["Swarm"]:
        """Create the swarm ``spec`` describes, or resume the one in its directory (with the
        settings saved there). ``port``: an in-process swarm's bus port for this start only
        (None: the spec's; on resume, the saved one)."""
        files = SwarmFiles(spec.data_dir)
        if fresh and files.dir.exists() and any(files.dir.iterdir()):
            raise FileExistsError(f"{files.dir} is not empty")
        with files.lock(processes=spec.processes if not files.exists else files.spec().processes):
            async with cls._open_locked(files, spec, port) as swarm:
                yield swarm

    @classmethod
    @contextlib.asynccontextmanager
    async def _open_locked(cls, files: "SwarmFiles", spec: SwarmSpec, port: int | None) -> AsyncIterator["Swarm"]:
        if files.exists:
            spec = files.spec()
            manifest = files.manifest()
            log.info("resuming swarm from %s", files.dir)
        else:
            manifest = files.create(spec)
        if port is not None and not spec.processes:
            spec = dataclasses.replace(spec, port=port)
        async with cls._etcd(files, spec) as etcd:
            async with cls._open_agents(files, spec, manifest) as swarm:
                swarm.etcd = etcd
                yield swarm

    @classmethod
    @contextlib.asynccontextmanager
    async def _etcd(cls, files: "SwarmFiles", spec: SwarmSpec) -> AsyncIterator[Any]:
        """etcd ordering: the local etcd cluster, running until the swarm stops (else None)."""
        if spec.ordering != "etcd":
            yield None
            return
        async with files.etcd_cluster(spec) as cluster:
            yield cluster

    @classmethod
    @contextlib.asynccontextmanager
    async def _open_agents(cls, files: "SwarmFiles", spec: SwarmSpec, manifest: Manifest) -> AsyncIterator["Swarm"]:
        if spec.processes:
            swarm = cls(files, spec, manifest, None)
            try:
                async with trio.open_nursery() as nursery:
                    swarm._nursery = nursery
                    for agent in server_agents(manifest):
                        await swarm.start_process(agent)
                    await nursery.start(gc_keeper)  # this process's clients (each agent process runs its own)
                    # clients need a node of their own: route by the manifest, mutual TLS as the swarm's operator
                    tls = files.client_tls("swarm-operator")
                    async with open_node(routes=manifest.agents, transports={"tcp": tls}) as node:
                        swarm.node = node
                        yield swarm
                    nursery.cancel_scope.cancel()
            finally:
                swarm.stop_processes()
        else:
            async with open_node() as node:
                address = await node.listen(f"tcp://{spec.host}:{spec.port}")
                manifest.agents = {a: address for a in manifest.agents}
                files.write_manifest(manifest)
                swarm = cls(files, spec, manifest, node)
                async with trio.open_nursery() as nursery:
                    swarm._nursery = nursery
                    for agent in server_agents(manifest):
                        await swarm.start_agent(agent)
                    await nursery.start(gc_keeper)  # every agent shares this interpreter's collector
                    yield swarm
                    nursery.cancel_scope.cancel()

    # -- in-process agents ------------------------------------------------

    async def start_agent(self, agent: str) -> None:
        assert self._nursery is not None and self.node is not None

        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            stopped = self._stopped[agent] = trio.Event()
            try:
                with trio.CancelScope() as scope:
                    self._scopes[agent] = scope
                    await run_server_agent(self.files, agent, self.node, self.manifest, runners=self.runners,
                                           task_status=task_status)
            finally:
                stopped.set()

        await self._nursery.start(runner)

    async def stop_agent(self, agent: str) -> None:
        """Stop an in-process agent and return once it has closed (its endpoint is off the node, so
        nothing sent after this reaches it). Cancelling alone returns at once: requests sent in the
        same scheduling round could still be answered by the stopping agent."""
        self._scopes[agent].cancel()
        await self._stopped[agent].wait()

    # -- agent processes ----------------------------------------------------

    async def start_process(self, agent: str, *, timeout: float = 60.0) -> None:
        logs = self.files.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{agent}.log", "ab")
        from agents.node.export import swarm_node_config
        from agents.node.service import PARENT_ENV

        command = [sys.executable, "-m", "agents.cli", "node", "start", "--config",
                   str(swarm_node_config(self.files, agent))]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMRSHARE_NODE_")}  # the config rules
        proc = subprocess.Popen(
            command,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**env, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())},
        )
        out.close()
        self.processes[agent] = proc
        ready = self.files.dir / "run" / f"{agent}.ready"
        log_file = logs / f"{agent}.log"
        with trio.move_on_after(timeout) as waiting:
            while not (ready.exists() and ready.read_text().strip() == str(proc.pid)):
                if proc.poll() is not None:
                    raise AgentStartError(f"agent {agent} exited with {proc.returncode}; see {log_file}"
                                          f"{_log_tail(log_file)}")
                await trio.sleep(0.05)
        if waiting.cancelled_caught:
            raise AgentStartError(f"agent {agent} did not report ready within {timeout:g} s; see {log_file}"
                                  f"{_log_tail(log_file)}")

    def kill(self, agent: str) -> None:
        """SIGKILL an agent process (fault injection)."""
        proc = self.processes[agent]
        proc.kill()
        proc.wait()

    def stall(self, agent: str) -> None:
        """SIGSTOP: the agent stops answering without closing its connections."""
        self.processes[agent].send_signal(signal.SIGSTOP)

    def resume(self, agent: str) -> None:
        self.processes[agent].send_signal(signal.SIGCONT)

    def stop_processes(self) -> None:
        """SIGTERM every agent process (resuming a stalled one), SIGKILL any still running after 5 s."""
        from agents.node.processes import stop_processes

        stop_processes(self.processes.values(), grace=5)

    # -- helpers for clients -------------------------------------------------

    def token(self, subject: str, org: str, attributes: dict[str, Any], enrolling: str) -> bytes:
        """The registrar's token for ``subject`` enrolling from ``enrolling`` (``agent.enroll_id``)."""
        return self.files.token(subject, org, attributes, enrolling)

    def describe(self) -> str:
        lines = [f"swarm {self.manifest.consortium} in {self.files.dir}",
                 f"  threshold {self.manifest.threshold} of {len(self.manifest.peers)} peers, "
                 f"{len(self.manifest.storage)} storage nodes (replicas {self.manifest.replicas}, "
                 f"write quorum {self.manifest.write_quorum})"]
        for agent in server_agents(self.manifest):
            role = ("orderer" if agent in orderer_agents(self.manifest) else "peer" if agent in self.manifest.peers
                    else "storage")
            org = self.files.node_org(agent) or ""
            lines.append(f"  {agent:<14} {role:<8} {org:<12} {self.manifest.agents[agent]}")
        if not self.spec.processes:
            lines.append("  (in-process: one bus node hosts every agent, at one address; `swarm up --processes` "
                         "runs each in its own process on its own port)")
        return "\n".join(lines)

