"""core.ledger ``config`` transactions: a majority of member orgs adds or removes an org,
in force from the next block on every peer and in the certificate light client."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given, settings, strategies as st

from agents.keys import AgentKeys
from agents.testing.consortium import TestConsortium, split_peers
from core import ecdsa, pre
from core.identity import Certificate, ConsortiumConfig, OrgInfo, PeerInfo
from core.ledger import (CONFIG_KEY, Block, Ledger, MemoryKV, check_config_change, config_change_message,
                         sign_config_change)
from core.errors import DecodeError, ValidationError
from core.lightclient import CertificateLightClient
from core.tx import Transaction

T0 = 1_780_000_000_000


class Chain:
    def __init__(self):
        self.c = TestConsortium.build(split_peers(3, ("org-a", "org-b", "org-c"), name="peer-{letter}"),
                                      created_at=T0 - 1000)
        self.kv = MemoryKV()
        self.ledger = Ledger(self.c.genesis, self.kv)
        self.light = CertificateLightClient(self.c.genesis)
        self.keys = {pid: k.ecdsa_private for pid, k in self.c.peer_keys.items()}
        self.admins = dict(self.c.admins)

    def commit(self, *txs: Transaction) -> tuple[str, ...]:
        height, head, _ = self.ledger.head()
        block = Block.make(height + 1, head, T0, [t.to_bytes() for t in txs], self.c.orderer_key)
        result = self.ledger.apply(block)
        self.kv.apply(result.writes)
        self.light.apply(block)
        return result.marks

    def tx(self, tx_type: str, submitter: str, body: dict) -> Transaction:
        return Transaction.create(tx_type, submitter, body, self.keys[submitter], T0)

    def change(self, new: ConsortiumConfig, signers: list[str], *, seq: int | None = None,
               submitter: str = "peer-a") -> Transaction:
        current, cur_seq = self.ledger.rules.current_config(_State(self.kv))
        seq = cur_seq if seq is None else seq
        sigs = {o: sign_config_change(current, seq, new, self.admins[o]) for o in signers}
        return self.tx("config", submitter, {"config": new.to_bytes(), "signatures": sigs})

    def register(self, peer: str, org: str, subject: str) -> Transaction:
        ms = pre.new_master_secret()
        recv = pre.KeyPair.derive(ms, pre.RECEIVE_LABEL)
        cert = Certificate(f"serial-{subject}", subject, org, {"role": "patient"},
                           ecdsa.public_key(ecdsa.generate_private_key()), pre.box_keypair()[1],
                           recv.public.to_bytes(), recv.prove(subject).to_bytes(), T0 // 1000 - 10,
                           T0 // 1000 + 86400, peer).sign(self.keys[peer])
        return self.tx("register", peer, {"cert": cert.to_dict(), "token_id": secrets.token_bytes(16)})


class _State:
    def __init__(self, kv):
        self.kv = kv

    def get(self, key):
        from core import canonical

        raw = self.kv.get(key)
        return None if raw is None else canonical.unpack(raw)


def with_org_d(chain: Chain) -> tuple[ConsortiumConfig, AgentKeys]:
    cur = chain.ledger.config
    admin, registrar, keys = ecdsa.generate_private_key(), ecdsa.generate_private_key(), AgentKeys.generate()
    chain.admins["org-d"] = admin
    chain.keys["peer-d"] = keys.ecdsa_private
    org = OrgInfo("org-d", "D", ecdsa.public_key(admin), ecdsa.public_key(registrar))
    peer = PeerInfo("peer-d", "org-d", keys.ecdsa_public, keys.box_public, 9)
    return ConsortiumConfig(cur.name, (*cur.orgs, org), (*cur.peers, peer), cur.orderer_id, cur.orderer_key,
                            cur.threshold, cur.max_skew_ms, cur.created_at), keys


def without(config: ConsortiumConfig, org: str) -> ConsortiumConfig:
    return ConsortiumConfig(config.name, tuple(o for o in config.orgs if o.id != org),
                            tuple(p for p in config.peers if p.org != org), config.orderer_id, config.orderer_key,
                            min(config.threshold, sum(p.org != org for p in config.peers)), config.max_skew_ms,
                            config.created_at)


def test_a_majority_adds_an_org_from_the_next_block_on():
    ch = Chain()
    new, _ = with_org_d(ch)
    assert ch.commit(ch.register("peer-d", "org-d", "dora")) == ("unknown_submitter",)  # not a member yet
    assert ch.commit(ch.change(new, ["org-a"])) == ("forbidden",)  # 1 of 3 is no majority
    assert ch.commit(ch.change(new, ["org-a", "org-d"])) == ("bad_config",)  # org-d is not a member yet
    # org-a's admin key signing for org-b does not count
    forged = ch.change(new, ["org-a", "org-b"])
    forged.body["signatures"]["org-b"] = forged.body["signatures"]["org-a"]
    forged = ch.tx("config", "peer-a", forged.body)
    assert ch.commit(forged) == ("bad_signature",)
    replay = ch.tx("config", "peer-b", ch.change(new, ["org-a", "org-b"]).body)
    change = ch.change(new, ["org-a", "org-b"])
    # the change and a register by the new peer in the same block: the register is judged
    # under the configuration in force when the block began
    assert ch.commit(change, ch.register("peer-d", "org-d", "dora")) == ("ok", "unknown_submitter")
    assert ch.ledger.config == new == ch.light.config
    assert ch.ledger.get(CONFIG_KEY)["seq"] == 1
    assert ch.commit(ch.register("peer-d", "org-d", "dora")) == ("ok",)
    assert ch.ledger.certificate("dora") is not None and ch.light.certificate("dora") is not None
    assert Ledger(ch.c.genesis, ch.kv).config == new  # a restarted peer follows the committed configuration
    # org-d leaves again: the configuration is the genesis's once more, at sequence 2
    assert ch.commit(ch.change(without(new, "org-d"), ["org-a", "org-b", "org-d"])) == ("ok",)
    assert ch.ledger.config == ch.c.config and ch.ledger.get(CONFIG_KEY)["seq"] == 2
    # the first approval (same configurations, sequence 0) cannot be replayed to add org-d back
    assert ch.commit(replay) == ("bad_signature",)


def test_a_majority_removes_an_org_whose_peers_then_submit_nothing():
    ch = Chain()
    assert ch.commit(ch.change(without(ch.ledger.config, "org-c"), ["org-a", "org-b"])) == ("ok",)
    assert [o.id for o in ch.ledger.config.orgs] == ["org-a", "org-b"]
    assert ch.commit(ch.register("peer-c", "org-c", "carl")) == ("unknown_submitter",)
    assert ch.commit(ch.register("peer-a", "org-a", "ann")) == ("ok",)
    assert ch.light.config == ch.ledger.config
    # with two members left, one is not a majority
    assert ch.commit(ch.change(without(ch.ledger.config, "org-b"), ["org-a"])) == ("forbidden",)


def test_a_change_may_touch_one_org_only():
    ch = Chain()
    cur = ch.ledger.config
    new, _ = with_org_d(ch)
    two = without(new, "org-c")  # adds one and removes one
    renamed = ConsortiumConfig("other", cur.orgs, cur.peers, cur.orderer_id, cur.orderer_key, cur.threshold,
                               cur.max_skew_ms, cur.created_at)
    rekeyed = ConsortiumConfig(cur.name, cur.orgs, (PeerInfo("peer-a", "org-a", ch.c.peer_keys["peer-b"].ecdsa_public,
                                                             cur.peers[0].box_key, 1), *cur.peers[1:]),
                               cur.orderer_id, cur.orderer_key, cur.threshold, cur.max_skew_ms, cur.created_at)
    for bad in (two, renamed, rekeyed, cur):
        with pytest.raises(ValidationError) as info:
            check_config_change(cur, 0, bad, {o: sign_config_change(cur, 0, bad, ch.admins[o])
                                              for o in ("org-a", "org-b", "org-c")})
        assert info.value.code == "bad_config"
    # a new org's peer may not take a current peer's proxy index (no such configuration exists)
    d = new.peers[-1]
    with pytest.raises(DecodeError):
        ConsortiumConfig(new.name, new.orgs, (*cur.peers, PeerInfo(d.id, d.org, d.ecdsa_key, d.box_key, 2)),
                         cur.orderer_id, cur.orderer_key, cur.threshold, cur.max_skew_ms, cur.created_at)
    assert ch.commit(ch.change(new, ["org-a", "org-b"], submitter="peer-b")) == ("ok",)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_the_signed_message_binds_the_sequence_and_both_configs(seq, other_seq):
    ch = Chain()
    cur = ch.ledger.config
    new, _ = with_org_d(ch)
    msg = config_change_message(cur, seq, new)
    assert (msg == config_change_message(cur, other_seq, new)) == (seq == other_seq)
    assert msg != config_change_message(new, seq, cur)
