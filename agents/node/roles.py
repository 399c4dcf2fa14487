"""The one code path that runs a server agent: peer, orderer or storage node.

:func:`build_agent` makes a :class:`RoleAgent` from an agent's id, keys, the
manifest and its settings; ``run(node)`` runs it on a bus node. The embedded
swarm (:func:`agents.swarm.run_server_agent`, all agents on one node) and
``emrshare node start`` (one agent per process, also what ``swarm up
--processes`` starts) both go through here. A RoleAgent also answers what the
node service asks: its height, its metric families, a status summary, and
``drain()`` (the in-flight work to finish before a graceful stop).

An orderer that the genesis's orderer set names is an etcd orderer node
(:class:`agents.ordering.EtcdOrderer`, docs/ordering.md): it needs the etcd
cluster's client URLs in :attr:`RoleSettings.etcd_endpoints` (a node's
``[ordering]`` table); the genesis orderer of a consortium without a set is the
embedded :class:`agents.orderer.OrdererAgent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Mapping

import trio

import bus
from core.ledger import parse_genesis

from agents.consortium import Manifest
from agents.keys import AgentKeys
from agents.node.metrics import Family

__all__ = ["RoleSettings", "RoleAgent", "build_agent", "role_of"]


@dataclass(frozen=True)
class RoleSettings:
    batch_size: int = 500
    batch_timeout: float = 0.03
    reconcile_interval: float = 30.0
    collect_grace: float = 900.0
    upload_timeout: float = 120.0
    enrolls: bool = True  # peers: enroll users (tokens signed by a registrar the genesis names)
    etcd_endpoints: tuple[str, ...] = ()  # etcd orderer nodes: the cluster's client URLs
    etcd_window: int = 10_000  # etcd orderer nodes: recent blocks kept in etcd
    lease_ttl: int = 1  # etcd orderer nodes: seconds of the leader's election lease
    reply_cache: int = 4096  # peers: signed re-encryption replies kept for repeat reads (0: none)


def role_of(agent: str, manifest: Manifest) -> str:
    if agent == manifest.orderer or agent in parse_genesis(manifest.genesis).config.orderer_ids:
        return "orderer"
    if agent in manifest.peers:
        return "peer"
    if agent in manifest.storage:
        return "storage"
    raise ValueError(f"{agent!r} is not an agent of this consortium")


class RoleAgent:
    """A server agent as the node service sees it (subclasses per role)."""

    role = ""

    def __init__(self, agent_id: str):
        self.id = agent_id

    async def run(self, node: bus.Node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    def height(self) -> int:
        return 0

    def refusals(self) -> Mapping[tuple[str, str], int]:
        return {}

    def endpoint_statistics(self) -> Any:
        ep = self._endpoint()
        return ep.statistics() if ep is not None else None

    def _endpoint(self) -> bus.Endpoint | None:
        return None

    def families(self) -> list[Family]:
        return []

    def queues(self) -> dict[str, int]:
        """The depth of each of the agent's own queues (``/status``)."""
        return {}

    def status(self) -> dict[str, Any]:
        """Other facts for ``/status``."""
        return {}

    def consortium_config(self) -> Any:
        """The consortium configuration the agent's ledger holds now (None: the genesis's, as it
        follows no configuration change)."""
        return None

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each block the agent commits (roles that commit: peers)."""

    def busy(self) -> int:
        """Units of in-flight work a graceful stop waits for (0: nothing to finish)."""
        return 0

    async def drain(self, poll: float = 0.02) -> None:
        """Return once :meth:`busy` is 0 (the caller bounds the wait)."""
        while self.busy():
            await trio.sleep(poll)


class _Serving(RoleAgent):
    """A role whose agent (``self.agent``) runs on the bus itself and has ``endpoint``,
    ``height`` and ``refusals`` of its own."""

    agent: Any

    async def run(self, node: bus.Node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.agent.run(node, task_status=task_status)

    def _endpoint(self) -> bus.Endpoint | None:
        return self.agent.endpoint

    def height(self) -> int:
        return self.agent.height

    def refusals(self) -> Mapping[tuple[str, str], int]:
        return self.agent.refusals.counts()


class _Peer(_Serving):
    role = "peer"

    def __init__(self, agent_id: str, keys: AgentKeys, manifest: Manifest, data_dir: Path, settings: RoleSettings):
        super().__init__(agent_id)
        from agents.peer import PeerAgent

        if parse_genesis(manifest.genesis).config.peer(agent_id) is None:
            raise ValueError(f"{agent_id!r} is not a peer in this consortium's genesis")
        self.agent = self.peer = PeerAgent(peer_id=agent_id, keys=keys, genesis=manifest.genesis, data_dir=data_dir,
                              manifest=manifest, enrolls=settings.enrolls, reply_cache=settings.reply_cache)
        self.blocks = self.txs_valid = self.txs_invalid = 0
        self.peer.add_commit_listener(self._committed)

    def _committed(self, block: Any, result: Any) -> None:
        self.blocks += 1
        self.txs_valid += result.valid_count
        self.txs_invalid += len(result.marks) - result.valid_count

    def busy(self) -> int:
        # served re-encryptions not yet in a batch the orderer took count too: a graceful stop waits for them
        return self.peer.forwarder.queued + self.peer.audit.pending

    def consortium_config(self) -> Any:
        return self.peer.config

    def on_commit(self, listener: Callable[[], None]) -> None:
        self.peer.add_commit_listener(lambda block, result: listener())

    def families(self) -> list[Family]:
        return [
            Family("emrshare_blocks_committed_total", "counter", "blocks this peer committed since it started")
            .add(self.blocks),
            Family("emrshare_transactions_committed_total", "counter",
                   "transactions in committed blocks since start, by outcome (valid or invalid)")
            .add(self.txs_valid, outcome="valid").add(self.txs_invalid, outcome="invalid"),
            Family("emrshare_reencryptions_total", "counter", "re-encryption shares this peer served")
            .add(self.peer.handlers.reencryptions),
            Family("emrshare_reencryption_reply_cache_hits_total", "counter",
                   "re-encryption shares served from the reply cache (a repeat read: no pairing, no signature)")
            .add(self.peer.handlers.reply_hits),
            Family("emrshare_access_log_entries_total", "counter",
                   "served re-encryptions by what became of their audit entry (logged: in a batch the orderer "
                   "took; dropped: given up, see the peer's error log)")
            .add(self.peer.audit.logged, outcome="logged").add(self.peer.audit.dropped, outcome="dropped"),
            Family("emrshare_access_log_oldest_seconds", "gauge",
                   "seconds the oldest access-log entry not yet taken by the orderer has waited (past a quarter "
                   "of the timestamp skew the peer answers re-encryptions busy)")
            .add(round(self.peer.audit.oldest_age, 3)),
        ]

    def queues(self) -> dict[str, int]:
        return {"forward": self.peer.forwarder.queued, "access_log": self.peer.audit.pending,
                "commit_waiters": self.peer.forwarder.waiting,
                "share_waiters": self.peer.handlers.waiting.waiting}

    def status(self) -> dict[str, Any]:
        return {"reencryptions": self.peer.handlers.reencryptions,
                "reencryption_reply_cache_hits": self.peer.handlers.reply_hits, "blocks_committed": self.blocks}


class _Orderer(_Serving):
    role = "orderer"

    def __init__(self, agent_id: str, keys: AgentKeys, manifest: Manifest, data_dir: Path, settings: RoleSettings):
        super().__init__(agent_id)
        from agents.orderer import OrdererAgent

        self.agent = self.orderer = OrdererAgent(orderer_id=agent_id, signing_key=keys.ecdsa_private, genesis=manifest.genesis,
                                    data_dir=data_dir, directory=manifest.directory(),
                                    batch_size=settings.batch_size, batch_timeout=settings.batch_timeout,
                                    storage=manifest.storage)
        self._start_height = self.orderer.height

    def busy(self) -> int:
        return self.orderer.queued

    def families(self) -> list[Family]:
        return [
            Family("emrshare_blocks_committed_total", "counter", "blocks this orderer cut since it started")
            .add(self.orderer.height - self._start_height),
        ]

    def queues(self) -> dict[str, int]:
        return {"orderer": self.orderer.queued}


class _EtcdOrderer(_Serving):
    """An orderer node of the genesis's orderer set, ordering on an etcd cluster."""

    role = "orderer"

    def __init__(self, agent_id: str, keys: AgentKeys, manifest: Manifest, data_dir: Path, settings: RoleSettings):
        super().__init__(agent_id)
        from agents.ordering import EtcdOrderer

        if not settings.etcd_endpoints:
            raise ValueError(f"{agent_id!r} is an orderer node of the genesis's orderer set and needs the etcd "
                             "cluster's endpoints")
        self.agent = self.orderer = EtcdOrderer(
            orderer_id=agent_id, signing_key=keys.ecdsa_private, genesis=manifest.genesis,
            etcd=list(settings.etcd_endpoints), directory=manifest.directory(), batch_size=settings.batch_size,
            batch_timeout=settings.batch_timeout, lease_ttl=settings.lease_ttl, window=settings.etcd_window,
            storage=manifest.storage)

    def busy(self) -> int:
        return self.orderer.queued

    def families(self) -> list[Family]:
        return [
            Family("emrshare_blocks_committed_total", "counter", "blocks this orderer node cut (appended to etcd) "
                   "since it started").add(self.orderer.blocks_cut),
        ]

    def queues(self) -> dict[str, int]:
        return {"orderer": self.orderer.queued}

    def status(self) -> dict[str, Any]:
        return {"ordering": "etcd", "leader": self.orderer.leader_id, "leads": self.orderer.is_leader}


class _Storage(RoleAgent):
    role = "storage"

    def __init__(self, agent_id: str, keys: AgentKeys, manifest: Manifest, data_dir: Path, settings: RoleSettings):
        super().__init__(agent_id)
        from agents.storage import BlobStore

        self.keys, self.manifest, self.settings = keys, manifest, settings
        self.store = BlobStore(data_dir)
        self.node: Any = None
        self.follower: Any = None
        self.endpoint: bus.Endpoint | None = None

    async def run(self, node: bus.Node, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from agents.admission import Classifier
        from agents.consortium import CertificateFollower
        from agents.runtime import make_endpoint
        from agents.storage.node import StorageAccess, StorageNode
        from agents.storage.reconcile import Reconciler

        manifest, settings = self.manifest, self.settings
        directory = manifest.directory()
        endpoint = make_endpoint(node, self.id, self.keys.ecdsa_private, directory)
        self.endpoint = endpoint
        self.follower = CertificateFollower(endpoint, manifest, directory)
        classifier = Classifier(peers=manifest.peers, orderer=manifest.orderer, storage=manifest.storage,
                                role=directory.role)
        self.node = StorageNode(endpoint, self.store, classifier=classifier, session_timeout=settings.upload_timeout,
                                access=StorageAccess.for_manifest(manifest, directory))
        reconciler = Reconciler(endpoint, self.store, self.follower, manifest.storage, replicas=manifest.replicas,
                                interval=settings.reconcile_interval, grace=settings.collect_grace, node=self.node)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.follower.run)
            await nursery.start(self.node.run)
            await nursery.start(reconciler.run)
            task_status.started()

    def _endpoint(self) -> bus.Endpoint | None:
        return self.endpoint

    def height(self) -> int:
        return self.follower.statistics().height if self.follower is not None else 0

    def refusals(self) -> Mapping[tuple[str, str], int]:
        return self.node.refusals.counts() if self.node is not None else {}

    def busy(self) -> int:
        return self.node.partial_uploads() if self.node is not None else 0

    def families(self) -> list[Family]:
        s = self.store.statistics()
        fams = [
            Family("emrshare_storage_bytes", "gauge", "bytes on the storage node's disk, by state")
            .add(s.used_bytes, state="used").add(s.reserved_bytes, state="reserved"),
            Family("emrshare_storage_blobs", "gauge", "blobs the storage node holds").add(s.blobs),
            Family("emrshare_storage_corruptions_total", "counter", "corrupt blobs found and quarantined")
            .add(self.store.corruptions),
        ]
        if s.quota_bytes is not None:
            fams.append(Family("emrshare_storage_quota_bytes", "gauge", "the node's disk quota").add(s.quota_bytes))
        return fams

    def queues(self) -> dict[str, int]:
        return {"put_sessions": self.busy()}

    def status(self) -> dict[str, Any]:
        s = self.store.statistics()
        return {"blobs": s.blobs, "used_bytes": s.used_bytes}


_ROLES = {"peer": _Peer, "orderer": _Orderer, "storage": _Storage}


def build_agent(agent_id: str, role: str, keys: AgentKeys, manifest: Manifest, data_dir: Path,
                settings: RoleSettings) -> RoleAgent:
    """The agent ``agent_id`` in ``role``, its state under ``data_dir`` (created)."""
    if role not in _ROLES:
        raise ValueError(f"unknown role {role!r}")
    cls = _ROLES[role]
    if role == "orderer" and agent_id in {o.id for o in parse_genesis(manifest.genesis).config.orderers}:
        cls = _EtcdOrderer
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return cls(agent_id, keys, manifest, Path(data_dir), settings)
