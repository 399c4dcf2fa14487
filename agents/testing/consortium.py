"""A test consortium built in one call, and the example policies and user
configurations the tests share.

* :class:`TestConsortium`: the keys and trust anchors of a consortium that
  exists only in a test or a benchmark: organizations, peers (:class:`AgentKeys`
  each, proxy indices 1..n in the order given), optional storage nodes, the
  orderer's key, the :class:`core.identity.ConsortiumConfig`, the signed
  genesis block (signed by every organization's admin key), the
  :class:`agents.consortium.Manifest`, each organization's admin and registrar
  keys (configuration signatures, enrollment tokens) and the bus's key directory. It runs
  nothing; :meth:`TestConsortium.orderer` and :meth:`TestConsortium.peer` make
  the real agents over it.
* :func:`split_peers`: peer ids and organizations laid out as the tests name them.
* :data:`CARDIOLOGY_POLICY`, :data:`SHARING_POLICY`: the example policies
  (cardiologists read cardiology records at once; with SHARING_POLICY general
  practitioners read everything once the patient approves).
* :func:`user_config`, :func:`swarm_user_config`: a :class:`agents.client.UserConfig`
  with test settings (fast key derivation, a 10 s request timeout).
* :func:`expect_not_enough_peers`: a doctor's read with fewer than t peers up
  fails quickly with :class:`agents.errors.NotEnoughPeers` naming the peers that failed.

For tests, benchmarks and integrators' experiments only: every secret here is
fresh (``secrets``/key generation) but nothing is kept safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from core import ecdsa
from core.identity import ConsortiumConfig, OrdererInfo, OrgInfo, PeerInfo
from core.ledger import Block, make_genesis

from agents.client import UserConfig
from agents.consortium import ConsortiumDirectory, Manifest, enrollment_token
from agents.errors import NotEnoughPeers
from agents.keys import AgentKeys

if TYPE_CHECKING:  # the agents import only where they are made
    from agents.doctor import DoctorAgent
    from agents.orderer import OrdererAgent
    from agents.ordering import EtcdOrderer
    from agents.peer import PeerAgent
    from agents.swarm import Swarm

__all__ = ["CARDIOLOGY_POLICY", "SHARING_POLICY", "TestConsortium", "expect_not_enough_peers", "split_peers",
           "swarm_user_config", "user_config"]

CARDIOLOGY_POLICY = """
policy "cardiology" version 1
default deny
rule cardio:
  allow read on label "cardiology"
  when role == "doctor" and department == "cardiology"
  approval auto
"""

SHARING_POLICY = CARDIOLOGY_POLICY.replace('"cardiology" version', '"sharing" version') + """\
rule gp:
  allow read on all
  when role == "doctor" and department == "general"
  approval patient
"""


def split_peers(n_peers: int, orgs: Sequence[str] = ("org-a", "org-b"), *, alternate: bool = False,
                name: str = "peer-{letter}-{number}") -> list[tuple[str, str]]:
    """``n_peers`` (peer id, organization) pairs over ``orgs``.

    By default the first ``ceil(n / len(orgs))`` peers go to the first
    organization and so on; with ``alternate`` they take turns. ``name`` is
    formatted with ``letter`` (the organization's last character), ``number``
    (the peer's place overall, from 1) and ``nth`` (its place in its
    organization, from 1): ``peer-a-1`` by default, ``peer-a1`` with
    ``name="peer-{letter}{nth}"``.
    """
    per_org = -(-n_peers // len(orgs))
    counts = dict.fromkeys(orgs, 0)
    out = []
    for i in range(n_peers):
        org = orgs[i % len(orgs)] if alternate else orgs[i // per_org]
        counts[org] += 1
        out.append((name.format(letter=org[-1], number=i + 1, nth=counts[org]), org))
    return out


@dataclass
class TestConsortium:
    """The keys and trust anchors of a test consortium (see the module docstring).

    ``genesis`` is the signed genesis :class:`Block` (``genesis.to_bytes()`` is
    what agents and manifests take); ``static_keys`` maps peers, storage nodes
    and the orderer to their ECDSA public keys (the manifest's ``keys``).
    """

    __test__ = False  # not a pytest test class

    name: str
    orgs: tuple[str, ...]
    orderer_id: str
    orderer_key: bytes
    peer_keys: dict[str, AgentKeys]
    peers: dict[str, PeerInfo]
    storage_keys: dict[str, AgentKeys]
    threshold: int
    config: ConsortiumConfig
    genesis: Block
    registrars: dict[str, bytes]  # org -> registrar ECDSA private key (signs enrollment tokens)
    admins: dict[str, bytes]  # org -> admin ECDSA private key (signs the configuration)
    static_keys: dict[str, bytes]
    manifest: Manifest
    orderer_nodes: dict[str, bytes] = field(default_factory=dict)  # etcd ordering: node id -> private key

    @classmethod
    def build(cls, peers: Sequence[tuple[str, str]] | None = None, *, name: str = "test", threshold: int = 2,
              storage: Iterable[str] = (), orgs: Sequence[str] = (), org_names: Mapping[str, str] | None = None,
              created_at: int | None = None, max_skew_ms: int | None = None,
              agents: Mapping[str, str] | None = None, orderers: int = 0, **manifest: Any) -> "TestConsortium":
        """A fresh consortium: ``peers`` as (id, organization) pairs (default
        :func:`split_peers` of 4), proxy indices in that order; ``storage`` node
        ids; ``orgs`` organizations to list before the peers' own (also those
        without peers); ``org_names`` the organizations' display names (default the id in
        capitals); ``created_at`` in ms (default a minute ago); ``agents`` the
        manifest's addresses and ``manifest`` its other keyword fields
        (``replicas``, ``write_quorum``). ``orderers`` > 0: the genesis names an orderer set
        of that many etcd orderer nodes (``orderer-1``, ...; their keys in ``orderer_nodes``)
        and the manifest points at the first."""
        peers = list(peers if peers is not None else split_peers(4))
        orgs = tuple(dict.fromkeys([*orgs, *(org for _, org in peers)]))
        peer_keys = {pid: AgentKeys.generate() for pid, _ in peers}
        infos = {pid: PeerInfo(pid, org, peer_keys[pid].ecdsa_public, peer_keys[pid].box_public, i + 1)
                 for i, (pid, org) in enumerate(peers)}
        storage_keys = {sid: AgentKeys.generate() for sid in storage}
        orderer_key = ecdsa.generate_private_key()
        timing = {"created_at": int(time.time() * 1000) - 60_000 if created_at is None else created_at}
        if max_skew_ms is not None:
            timing["max_skew_ms"] = max_skew_ms
        names = org_names or {}
        admins = {o: ecdsa.generate_private_key() for o in orgs}
        registrars = {o: ecdsa.generate_private_key() for o in orgs}
        nodes = {f"orderer-{i + 1}": ecdsa.generate_private_key() for i in range(orderers)}
        config = ConsortiumConfig(name, tuple(OrgInfo(o, names.get(o, o.upper()), ecdsa.public_key(admins[o]),
                                                      ecdsa.public_key(registrars[o])) for o in orgs),
                                  tuple(infos.values()), "orderer", ecdsa.public_key(orderer_key), threshold,
                                  **timing, orderers=tuple(OrdererInfo(n, ecdsa.public_key(k))
                                                           for n, k in nodes.items()))
        genesis = make_genesis(config, {o: config.sign_as_org(admins[o]) for o in orgs})
        static = {pid: k.ecdsa_public for pid, k in peer_keys.items()}
        static.update({sid: k.ecdsa_public for sid, k in storage_keys.items()})
        static["orderer"] = ecdsa.public_key(orderer_key)
        static.update({n: ecdsa.public_key(k) for n, k in nodes.items()})
        peer_orgs = {o: [pid for pid, org in peers if org == o] for o in orgs}
        return cls(name, orgs, "orderer", orderer_key, peer_keys, infos, storage_keys, threshold, config, genesis,
                   registrars, admins, static,
                   Manifest(name, genesis.to_bytes(), next(iter(nodes), "orderer"), list(infos), list(storage_keys),
                            threshold, dict(agents or {}), dict(static), peer_orgs, **manifest), nodes)

    def directory(self) -> ConsortiumDirectory:
        """A fresh bus key directory trusting the consortium's static keys."""
        return ConsortiumDirectory(dict(self.static_keys))

    def token(self, subject: str, org: str, attributes: dict, enrolling: str) -> bytes:
        """``org``'s registrar's enrollment token for ``subject`` with ``attributes``,
        bound to the enrolling id ``enrolling`` (``enroll:<hex ECDSA key>``)."""
        return enrollment_token(self.registrars[org], subject, org, attributes, enrolling)

    def orderer(self, data_dir: Path, **kw: Any) -> "OrdererAgent":
        """The embedded orderer over this genesis, storing its chain in ``data_dir``."""
        from agents.orderer import OrdererAgent

        kw.setdefault("storage", self.manifest.storage)  # storage nodes follow the orderer's blocks
        return OrdererAgent(orderer_id=self.orderer_id, signing_key=self.orderer_key,
                            genesis=self.genesis.to_bytes(), data_dir=data_dir,
                            directory=kw.pop("directory", None) or self.manifest.directory(), **kw)

    def ordering_node(self, node_id: str, etcd: list[str], **kw: Any) -> "EtcdOrderer":
        """Etcd orderer node ``node_id`` (built with ``orderers=``) over the etcd cluster at ``etcd``."""
        from agents.ordering import EtcdOrderer

        kw.setdefault("storage", self.manifest.storage)
        return EtcdOrderer(orderer_id=node_id, signing_key=self.orderer_nodes[node_id], genesis=self.genesis.to_bytes(),
                           etcd=etcd, directory=kw.pop("directory", None) or self.manifest.directory(), **kw)

    def peer(self, pid: str, data_dir: Path, **kw: Any) -> "PeerAgent":
        """Peer ``pid`` (its own keys; it checks enrollment tokens against the registrar keys in the genesis)."""
        from agents.peer import PeerAgent

        return PeerAgent(peer_id=pid, keys=self.peer_keys[pid], genesis=self.genesis.to_bytes(), data_dir=data_dir,
                         manifest=self.manifest, **kw)


def user_config(manifest: Manifest, data_dir: Path, subject: str, org: str, attributes: dict, *,
                passphrase: str | None = None, request_timeout: float = 10.0, **kw: Any) -> UserConfig:
    """A user's configuration for tests: fast key derivation, passphrase
    ``"pw <subject>"`` unless given, a 10 s request timeout unless given."""
    return UserConfig(subject=subject, org=org, attributes=attributes, data_dir=data_dir, manifest=manifest,
                      passphrase="pw " + subject if passphrase is None else passphrase, fast_kdf=True,
                      request_timeout=request_timeout, **kw)


def swarm_user_config(swarm: "Swarm", subject: str, org: str, attributes: dict, **kw: Any) -> UserConfig:
    """:func:`user_config` for a user of ``swarm`` (its manifest, the swarm's user directory)."""
    return user_config(swarm.manifest, swarm.files.user_dir(subject), subject, org, attributes, **kw)


async def expect_not_enough_peers(doctor: "DoctorAgent", patient: str, record_id: str, *, answered: int,
                                  needed: int, failed: Iterable[str], timeout: float) -> NotEnoughPeers:
    """``doctor.read(patient, record_id)`` while fewer than t peers are up must raise
    :class:`NotEnoughPeers` within ``timeout`` seconds (a clear error, not a hang: else
    trio.TooSlowError), with ``answered`` valid shares of the ``needed`` and an error
    from exactly the peers in ``failed``; anything else raises AssertionError.
    Returns the error."""
    with trio.fail_after(timeout):
        try:
            await doctor.read(patient, record_id)
        except NotEnoughPeers as exc:
            error = exc
        else:
            raise AssertionError(f"the read of {record_id!r} succeeded with fewer than t peers up")
    if (error.answered, error.needed) != (answered, needed):
        raise AssertionError(f"NotEnoughPeers: {error.answered} of {error.needed} shares, "
                             f"expected {answered} of {needed}")
    if set(error.errors) != set(failed):
        raise AssertionError(f"NotEnoughPeers names {sorted(error.errors)}, expected {sorted(failed)}")
    return error
