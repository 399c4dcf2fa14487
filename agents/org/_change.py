"""Adding or removing a member organization after the genesis: a change file the
members sign (:func:`core.ledger.check_config_change` is the rule every peer applies).

A change file (JSON) names the configuration in force (``current``, the
``seq``-th: 0 is the genesis's), the proposed one (``new``) and the member
admins' signatures so far. The next change starts from a committed one
(:func:`change_draft` with ``after``), so no ledger query is needed to prepare it.
:func:`config_transaction` makes the ``config`` transaction a peer of a member
submits once more than half of the members signed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from core.errors import DecodeError, ValidationError
from core.identity import ConsortiumConfig, OrgInfo, PeerInfo
from core.ledger import check_config_change, parse_genesis, sign_config_change
from core.tx import Transaction

from agents.org._material import OrgDir, OrgError, OrgProfile, read_versioned

CHANGE_VERSION = 1


@dataclass
class ConfigChange:
    current: ConsortiumConfig
    seq: int
    new: ConsortiumConfig
    signatures: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": CHANGE_VERSION, "seq": self.seq, "current": self.current.to_bytes().hex(),
                           "new": self.new.to_bytes().hex(),
                           "signatures": {o: s.hex() for o, s in sorted(self.signatures.items())}}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "change file") -> "ConfigChange":
        try:
            d = read_versioned(text, CHANGE_VERSION, "a configuration change file")
            if type(d.get("seq")) is not int:
                raise ValueError("seq must be an integer")
            return cls(ConsortiumConfig.from_bytes(bytes.fromhex(d["current"])), d["seq"],
                       ConsortiumConfig.from_bytes(bytes.fromhex(d["new"])),
                       {o: bytes.fromhex(s) for o, s in d["signatures"].items()})
        except (ValueError, KeyError, TypeError, AttributeError, DecodeError) as exc:
            raise OrgError(f"reading {source}: {exc}; prepare it again with `emrshare consortium change`") from None

    def missing(self) -> int:
        """How many more member signatures the change needs (0: it may be submitted)."""
        return max(0, len(self.current.orgs) // 2 + 1 - len(self.signatures))


def change_draft(*, genesis: bytes | None = None, after: ConfigChange | None = None,
                 add: OrgProfile | None = None, remove: str | None = None,
                 threshold: int | None = None) -> ConfigChange:
    """A change from the genesis's configuration, or from the one ``after`` (a change
    committed before) made, adding the organization of profile ``add`` (its peers take
    the next proxy indices) or removing organization ``remove``."""
    if (genesis is None) == (after is None) or (add is None) == (remove is None):
        raise OrgError("preparing a configuration change: give the genesis or the previous change, and one "
                       "organization to add or remove; see `emrshare consortium change --help`")
    current, seq = (parse_genesis(genesis).config, 0) if after is None else (after.new, after.seq + 1)
    orgs, peers = list(current.orgs), list(current.peers)
    if add is not None:
        if current.org(add.org) is not None:
            raise OrgError(f"preparing a configuration change: {add.org} is already a member; remove it first")
        orgs.append(OrgInfo(add.org, add.name, add.admin_key, add.registrar_key, add.tls_ca))
        start = max((p.index for p in peers), default=0)
        peers += [PeerInfo(n.id, add.org, n.ecdsa_key, n.box_key, start + i + 1)
                  for i, n in enumerate(add.nodes_with("peer"))]
    else:
        if current.org(remove) is None:
            raise OrgError(f"preparing a configuration change: {remove} is not a member; check the name")
        orgs = [o for o in orgs if o.id != remove]
        peers = [p for p in peers if p.org != remove]
    try:
        new = ConsortiumConfig(current.name, tuple(orgs), tuple(peers), current.orderer_id, current.orderer_key,
                               current.threshold if threshold is None else threshold, current.max_skew_ms,
                               current.created_at, orderers=current.orderers)
    except DecodeError as exc:
        raise OrgError(f"preparing a configuration change: {exc}; give --threshold") from None
    return ConfigChange(current, seq, new)


def sign_change(change: ConfigChange, org_dir: OrgDir) -> ConfigChange:
    """``change`` with the signature of ``org_dir``'s organization (its admin key) added."""
    org, admin = org_dir.member_admin_key(
        change.current, "signing the configuration change",
        member="a current member; only current members approve a change", document="configuration",
        todo="sign with the organization's current directory")
    change.signatures[org] = sign_config_change(change.current, change.seq, change.new, admin)
    return change


def config_transaction(change: ConfigChange, peer_id: str, peer_private_key: bytes,
                       now_ms: int | None = None) -> Transaction:
    """The ``config`` transaction a member's peer submits (checked here first, as the ledger will)."""
    try:
        check_config_change(change.current, change.seq, change.new, change.signatures)
    except ValidationError as exc:
        raise OrgError(f"submitting the configuration change: {exc.message}; "
                       "collect more members' signatures with `emrshare consortium sign-change`") from None
    return Transaction.create("config", peer_id, {"config": change.new.to_bytes(), "signatures": change.signatures},
                              peer_private_key, int(time.time() * 1000) if now_ms is None else now_ms)
