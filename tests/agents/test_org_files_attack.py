"""Attack review (issue 15): the organization files another party hands over are read
without surprise. A user's ``request.json`` reaches the registrar, another hospital's
``profile.json`` reaches ``consortium genesis|manifest|change``, a change file and a token
file travel between people: whatever bytes they hold, reading one gives the value or an
:class:`agents.org.OrgError` (one line for the CLI), never another exception (a traceback)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.keys import KeyStore
from agents.org import (ConfigChange, EnrollRequest, OrgError, OrgProfile, TokenFile, Unlock, default_node_ids,
                        init_org, issue_token, new_user_tls_key, parse_tls_key)
from core import ecdsa

READERS = {"request": EnrollRequest, "token": TokenFile, "profile": OrgProfile, "change": ConfigChange}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


def _read(reader, text) -> None:
    try:
        reader.from_json(text)
    except OrgError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("kind", READERS)
def test_deeply_nested_json_is_refused_in_one_line(kind):
    """Finding: a request.json (or profile, token, change file) of 100,000 nested brackets raised
    RecursionError out of the reader: a traceback in `registrar issue --request` on a user's file."""
    for text in ("[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(OrgError, match="nested"):
            READERS[kind].from_json(text)


@pytest.mark.parametrize("kind", READERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, version=st.sampled_from([1, 1, 2, "1", None]))
def test_any_json_is_read_or_refused_in_one_line(kind, value, version):
    doc = value if not isinstance(value, dict) else {**value, "version": version}
    _read(READERS[kind], json.dumps(doc))


def _real_files(tmp) -> dict[str, dict]:
    """A real profile, request and token file (JSON objects), to spoil field by field."""
    import time

    from agents.org import OrgDir

    KeyStore.create_key_file(tmp / "h1.key")
    unlock = Unlock(key_file=tmp / "h1.key")
    profile = init_org(tmp / "h1", "h1", unlock, nodes=default_node_ids("h1", 1, 1, True),
                       addresses={"peer-h1-1": "tcp://127.0.0.1:7001", "storage-h1-1": "tcp://127.0.0.1:7002",
                                  "orderer-h1": "tcp://127.0.0.1:7003"})
    _, tls_public = new_user_tls_key()
    request = EnrollRequest(ecdsa.public_key(ecdsa.generate_private_key()), tls_public)
    token = issue_token(OrgDir(tmp / "h1", unlock), subject="alice", attributes={"role": "patient"},
                        enroll_key=request.enroll_key, expires=int(time.time()) + 60,
                        tls_key=parse_tls_key(tls_public))
    return {"profile": json.loads(profile.to_json()), "request": json.loads(request.to_json()),
            "token": json.loads(token.to_json())}


REAL: dict[str, dict] = {}


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    REAL.update(_real_files(tmp_path_factory.mktemp("orgfiles")))
    for kind, doc in REAL.items():  # the unspoiled files read
        READERS[kind].from_json(json.dumps(doc))
    return REAL


@pytest.mark.parametrize("kind", ["profile", "request", "token"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), value=json_values)
def test_a_real_file_with_one_field_spoiled_is_read_or_refused_in_one_line(real_files, kind, data, value):
    doc = json.loads(json.dumps(real_files[kind]))
    path = [data.draw(st.sampled_from(sorted(doc)))]
    if path[0] == "nodes" and data.draw(st.booleans()):  # a node of the profile, or one of its fields
        node = doc["nodes"][0]
        if data.draw(st.booleans()):
            node[data.draw(st.sampled_from(sorted(node)))] = value
        else:
            doc["nodes"][0] = value
    else:
        doc[path[0]] = value
    _read(READERS[kind], json.dumps(doc))


def test_a_profile_whose_tls_ca_is_not_one_ca_certificate_is_refused(real_files):
    """Finding: a profile's `tls_ca` was any text; `consortium genesis|change` carried it into the
    configuration, where every node trusts it. Now it must be exactly one CA certificate."""
    from agents.org import _tls
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    ca_key = _tls.new_key()
    ca = _tls.make_ca("h9", ca_key, now)
    leaf = _tls.make_node_cert("h9", "peer-h9-1", ["127.0.0.1"], _tls.new_key(), ca, ca_key, now)
    for bad in ("hello", ca.decode() + _tls.make_ca("web", _tls.new_key(), now).decode(), leaf.decode()):
        doc = {**real_files["profile"], "tls_ca": bad}
        with pytest.raises(OrgError, match="reading profile"):
            OrgProfile.from_json(json.dumps(doc))
    assert OrgProfile.from_json(json.dumps({**real_files["profile"], "tls_ca": ca.decode()})).tls_ca == ca.decode()


def test_registrar_issue_shows_the_enrolling_key_to_compare(tmp_path):
    """Finding: request.json is public but its integrity is everything (a request swapped on its way,
    by mail say, gets the swapper a token and a TLS certificate in the person's name), and `registrar
    issue --request` did not show which key it bound the token to. It now prints the enrolling key,
    as `user init` printed it to the person, to compare."""
    from agents.testing.cli import run_cli

    _real_files(tmp_path)
    _, tls_public = new_user_tls_key()
    enroll_key = ecdsa.public_key(ecdsa.generate_private_key())
    (tmp_path / "alice.request").write_text(EnrollRequest(enroll_key, tls_public).to_json())
    out = run_cli("registrar", "issue", "--org-dir", str(tmp_path / "h1"), "--key-file", str(tmp_path / "h1.key"),
                  "--subject", "alice", "--role", "patient", "--request", str(tmp_path / "alice.request"),
                  "--out", str(tmp_path / "alice.token"))
    assert out.returncode == 0, out.stderr
    assert f"enrolling public key {enroll_key.hex()}" in out.stdout, out.stdout


def test_submit_change_refuses_a_forged_change_file_before_submitting(tmp_path):
    """Finding: `consortium submit-change` counted a change file's signatures without checking them:
    a forged or spoiled file (a member's signature that does not verify, a new member whose TLS CA is
    not a CA certificate) was signed and submitted as the peer, refused by every peer's ledger, and
    the command waited its whole timeout to say "no peer applied it" and "run the command again
    later". It now checks the change as the ledger will and says why, before any connection."""
    import dataclasses

    import trio

    from agents.cli.base import CliError
    from agents.cli.orgchange import submit_change
    from agents.org import (OrgDir, build_config, change_draft, draft, manifest_for, seal, sign_change,
                            sign_draft)

    def org(name: str, orderer: bool = False):
        KeyStore.create_key_file(tmp_path / f"{name}.key")
        unlock = Unlock(key_file=tmp_path / f"{name}.key")
        nodes = default_node_ids(name, 1, 0, orderer)
        profile = init_org(tmp_path / name, name, unlock, nodes=nodes,
                           addresses={n: "tcp://127.0.0.1:9" for n, _ in nodes})
        return OrgDir(tmp_path / name, unlock), profile

    (h1, p1), (h2, p2), (_, p3) = org("h1", orderer=True), org("h2"), org("h3")
    genesis = seal(sign_draft(sign_draft(draft(build_config([p1, p2], name="c", threshold=1, created_at=1000)), h1),
                              h2)).to_bytes()
    manifest = manifest_for(genesis, [p1, p2])
    signed = sign_change(sign_change(change_draft(genesis=genesis, add=p3), h1), h2)
    peer_key = h1.node_keys("peer-h1-1").ecdsa_private
    spoiled = dataclasses.replace(signed, signatures={**signed.signatures, "h2": bytes(64)})
    new_orgs = tuple(dataclasses.replace(o, tls_ca="not a certificate") if o.id == "h3" else o
                     for o in signed.new.orgs)
    bad_ca = sign_change(sign_change(dataclasses.replace(signed, new=dataclasses.replace(signed.new, orgs=new_orgs),
                                                         signatures={}), h1), h2)
    for change, why in ((spoiled, "bad_signature"), (bad_ca, "the TLS CA of h3")):
        with pytest.raises(CliError) as info:
            trio.run(submit_change, change, "peer-h1-1", peer_key, manifest, "consortium submit-change c1", 30.0)
        assert "the ledger would refuse this change" in str(info.value) and why in str(info.value), info.value
