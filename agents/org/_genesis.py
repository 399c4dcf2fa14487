"""The consortium genesis built from organizations' profiles, signed by each.

A draft is a genesis block (:func:`core.ledger.make_genesis`) that still lacks
some member organizations' signatures; :func:`sign_draft` adds one (the org
admin key), :func:`seal` checks that none is missing (:func:`core.ledger.parse_genesis`,
what every node does at start). :func:`manifest_for` gives the clients' view
(addresses, keys) of a sealed genesis from the members' profiles.
"""

from __future__ import annotations

from typing import Sequence

from core.errors import DecodeError
from core.identity import ConsortiumConfig, OrdererInfo, OrgInfo, PeerInfo
from core.ledger import Genesis, make_genesis, missing_signatures, parse_genesis, read_genesis_draft

from agents.consortium import Manifest
from agents.org._material import OrgDir, OrgError, OrgProfile


def build_config(profiles: Sequence[OrgProfile], *, name: str, threshold: int, created_at: int,
                 orderer: str | None = None, max_skew_ms: int = 120_000,
                 orderer_set: bool = False) -> ConsortiumConfig:
    """The consortium configuration of ``profiles``: their organizations, their
    peers with proxy indices 1..n in profile order, the orderer node ``orderer``
    (default: the first profile's orderer node), ``threshold`` of the peers.
    ``orderer_set`` (etcd ordering, docs/ordering.md): every profile's orderer node
    is in the genesis's orderer set, ``orderer`` first."""
    what = f"building the genesis of {name}"
    if len({p.org for p in profiles}) != len(profiles):
        raise OrgError(f"{what}: an organization's profile is given twice; give each once")
    ids = [n.id for p in profiles for n in p.nodes]
    if len(set(ids)) != len(ids):
        raise OrgError(f"{what}: two organizations name a node alike; rename one with `emrshare org init`")
    orderers = {n.id: n for p in profiles for n in p.nodes_with("orderer")}
    if not orderers:
        raise OrgError(f"{what}: no profile has an orderer node; run `emrshare org init --orderer` for one org")
    chosen = orderer or next(iter(orderers))
    if chosen not in orderers:
        raise OrgError(f"{what}: no orderer node {chosen!r}; the profiles have {', '.join(orderers)}")
    try:
        nodes = [(p.org, n) for p in profiles for n in p.nodes_with("peer")]
        peers = [PeerInfo(n.id, org, n.ecdsa_key, n.box_key, i + 1) for i, (org, n) in enumerate(nodes)]
        in_set = [chosen, *(o for o in orderers if o != chosen)] if orderer_set else []
        return ConsortiumConfig(
            name, tuple(OrgInfo(p.org, p.name, p.admin_key, p.registrar_key, p.tls_ca) for p in profiles),
            tuple(peers), chosen, orderers[chosen].ecdsa_key, threshold, max_skew_ms=max_skew_ms,
            created_at=created_at, orderers=tuple(OrdererInfo(o, orderers[o].ecdsa_key) for o in in_set))
    except DecodeError as exc:
        raise OrgError(f"{what}: {exc}; check --threshold and the profiles") from None


def draft(config: ConsortiumConfig) -> bytes:
    """The unsigned genesis draft of ``config``."""
    return make_genesis(config, {}).to_bytes()


def read_draft(raw: bytes, *, source: str = "draft") -> tuple[ConsortiumConfig, dict[str, bytes]]:
    try:
        return read_genesis_draft(raw)
    except DecodeError as exc:
        raise OrgError(f"reading the genesis {source}: {exc}; build it again with `emrshare consortium genesis`") \
            from None


def sign_draft(raw: bytes, org_dir: OrgDir, *, source: str = "draft") -> bytes:
    """``raw`` with the signature of ``org_dir``'s organization (its admin key) added."""
    config, signatures = read_draft(raw, source=source)
    org, admin = org_dir.member_admin_key(
        config, f"signing {source}", member=f"a member of {config.name}; sign only a genesis built with your profile",
        document="genesis", todo="build the genesis from this organization's current profile")
    signatures[org] = config.sign_as_org(admin)
    return make_genesis(config, signatures).to_bytes()


def seal(raw: bytes, *, source: str = "draft") -> Genesis:
    """The checked genesis: every member organization has signed (else OrgError naming who has not)."""
    config, signatures = read_draft(raw, source=source)
    missing = missing_signatures(config, signatures)
    if missing:
        raise OrgError(f"sealing {source}: not signed by {', '.join(missing)}; have each run "
                       f"`emrshare consortium sign --org-dir DIR {source}`")
    return parse_genesis(raw)


def manifest_for(genesis: bytes, profiles: Sequence[OrgProfile], *, replicas: int = 3,
                 write_quorum: int = 2) -> Manifest:
    """The clients' view of a sealed genesis: every node's address and key from the
    members' profiles, which must carry the keys the genesis names, and the organization
    of each orderer and storage node (``node_orgs``: which TLS CA vouches for it)."""
    config = parse_genesis(genesis).config
    by_id = {n.id: n for p in profiles for n in p.nodes}
    for peer in config.peers:
        node = by_id.get(peer.id)
        if node is None or node.ecdsa_key != peer.ecdsa_key:
            raise OrgError(f"building the manifest: no profile gives peer {peer.id} with the genesis's key; "
                           "give every member's current profile")
    for orderer in config.orderers:
        node = by_id.get(orderer.id)
        if node is None or node.ecdsa_key != orderer.key:
            raise OrgError(f"building the manifest: no profile gives orderer node {orderer.id} with the genesis's "
                           "key; give every member's current profile")
    storage = [n.id for p in profiles for n in p.nodes_with("storage")]
    used = list(dict.fromkeys([config.orderer_id, *config.orderer_ids, *(p.id for p in config.peers), *storage]))
    return Manifest(config.name, genesis, config.orderer_id, [p.id for p in config.peers], storage,
                    config.threshold, {a: by_id[a].address for a in used}, {a: by_id[a].ecdsa_key for a in used},
                    {o.id: [p.id for p in config.peers if p.org == o.id] for o in config.orgs},
                    min(replicas, max(1, len(storage))), min(write_quorum, max(1, len(storage))),
                    {n.id: p.org for p in profiles for n in p.nodes if n.id in used and n.role != "peer"})


def genesis_manifest(genesis: bytes, addresses: dict[str, str]) -> Manifest:
    """A user's minimal manifest from the genesis alone: the peers and the orderer
    with their keys from the genesis, ``addresses`` for the ones it can reach."""
    config = parse_genesis(genesis).config
    keys = {p.id: p.ecdsa_key for p in config.peers}
    keys[config.orderer_id] = config.orderer_key
    return Manifest(config.name, genesis, config.orderer_id, [p.id for p in config.peers], [], config.threshold,
                    dict(addresses), keys, {o.id: [p.id for p in config.peers if p.org == o.id] for o in config.orgs})
