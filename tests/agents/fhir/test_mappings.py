"""The pure FHIR mappings: ledger events -> AuditEvents (valid R4 for any event), the label table,
transaction planning (reference resolution), SMART scopes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.identity import check_id
from agents.fhir import FhirError, LabelMap, LabelMapError, audit_bundle, audit_event, plan_transaction, record_id_for
from agents.testing.fhir import generate_bundle

R4B = pytest.importorskip("fhir.resources.R4B")
from fhir.resources.R4B.auditevent import AuditEvent  # noqa: E402
from fhir.resources.R4B.bundle import Bundle  # noqa: E402

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,40}", fullmatch=True)
text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and s)
decisions = st.fixed_dictionaries({"effect": st.sampled_from(["allow", "deny"]),
                                   "approval": st.sampled_from([None, "auto", "patient"]),
                                   "rule": st.sampled_from(["default", "cardio", "no-policy"]),
                                   "reason": text, "policy": text, "version": st.integers(0, 9)})
events = st.fixed_dictionaries(
    {"event": st.sampled_from(["store", "set_policy", "access_request", "grant", "deny_request", "revoke_grant",
                               "access", "emergency_access"]),
     "actor": ids, "time": st.integers(0, 4_000_000_000_000), "height": st.integers(1, 10**9),
     "tx": st.binary(min_size=32, max_size=32)},
    optional={"record_id": ids, "label": text, "cid": ids, "request_id": ids, "grant_id": ids, "doctor": ids,
              "peers": st.lists(ids, max_size=3), "reason": text, "share_index": st.integers(1, 9),
              "policy": text, "version": st.integers(0, 9), "decision": decisions, "peer": ids})


@given(st.lists(events, max_size=4), ids)
def test_every_ledger_event_is_a_valid_r4_auditevent(evs, patient):
    bundle = audit_bundle(evs, patient, bundle_type="searchset", base_url="http://x")
    Bundle.model_validate(bundle)
    for entry, event in zip(bundle["entry"], evs):
        res = entry["resource"]
        AuditEvent.model_validate(res)
        assert res["id"] == f"{event['height']}-{event['tx'].hex()[:16]}"
        assert any(e["what"].get("identifier", {}).get("value") == event["tx"].hex() for e in res["entity"])
        assert json.loads(json.dumps(res)) == res


def test_auditevent_of_a_denied_request_names_the_rule():
    ev = {"event": "access_request", "actor": "dr-skin", "time": 1767225600250, "height": 7, "tx": b"\x07" * 32,
          "request_id": "req-1", "record_id": "fhir-1", "label": "labs",
          "decision": {"effect": "deny", "approval": None, "rule": "default", "reason": "no rule matched",
                       "policy": "p", "version": 2}}
    res = audit_event(ev, "alice")
    assert res["outcome"] == "4" and "'default'" in res["outcomeDesc"] and res["action"] == "E"
    assert res["recorded"] == "2026-01-01T00:00:00.250Z"
    assert res["agent"][0]["who"]["identifier"]["value"] == "dr-skin" and res["agent"][0]["requestor"]
    request = next(e for e in res["entity"] if e["what"].get("identifier", {}).get("value") == "req-1")
    assert {"type": "rule", "valueString": "default"} in request["detail"]
    assert res["entity"][0] == {"what": {"reference": "Patient/alice"},
                                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                         "code": "1"},
                                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}


def test_label_table():
    labels = LabelMap.default_map()
    obs = {"resourceType": "Observation", "category": [{"coding": [{"code": "survey"}, {"code": "laboratory"}]}]}
    assert labels.label_for(obs) == "labs"
    assert labels.label_for({"resourceType": "Observation"}) == "observations"
    assert labels.label_for({"resourceType": "Basic"}) == "other"
    assert labels.labels_for_type("Observation", "vital-signs") == ["vitals"]
    strict = LabelMap.from_dict({"types": {"Condition": "problems"}})
    with pytest.raises(LabelMapError, match="no default"):
        strict.label_for({"resourceType": "Basic"})
    for bad in ({"types": {"observation": "x"}}, {"types": {"Observation": "a b"}}, {"security": {"x": "y"}},
                {"kinds": {}}):
        with pytest.raises(LabelMapError):
            LabelMap.from_dict(bad)


@given(st.from_regex(r"[A-Z][A-Za-z]{1,63}", fullmatch=True), st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True))
def test_record_ids_are_ledger_ids(rtype, rid):
    rec = record_id_for(rtype, rid)
    assert check_id(rec, "record id") == rec and rec != record_id_for(rtype, rid + "x")


@given(st.integers(0, 2**32), st.integers(2, 24))
def test_transaction_plan_resolves_references(seed, size):
    bundle = generate_bundle(seed, size)
    entries = plan_transaction(bundle, LabelMap.default_map(), max_entries=10_000)
    assert len(entries) == len(bundle["entry"])
    known = {f"{e.resource_type}/{e.resource_id}" for e in entries}
    text = json.dumps([e.resource for e in entries])
    assert "urn:uuid:" not in text
    for e in entries:
        for ref in _refs(e.resource):
            assert ref in known or not ref.startswith(tuple(t + "/" for t in {x.split("/")[0] for x in known}))


def _refs(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


@pytest.mark.parametrize("bundle, why", [
    ({"resourceType": "Bundle", "type": "batch"}, "transaction"),
    ({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "POST", "url": "Patient"}}]},
     "no resource"),
    ({"resourceType": "Bundle", "type": "transaction",
      "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "DELETE", "url": "Patient/1"}}]},
     "POST <Type>"),
    ({"resourceType": "Bundle", "type": "transaction",
      "entry": [{"resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "POST", "url": "Patient"}}] * 2},
     "twice"),
    ({"resourceType": "Bundle", "type": "transaction",
      "entry": [{"resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "PUT", "url": "Patient/b"}}]},
     "differs"),
])
def test_transaction_refusals(bundle, why):
    with pytest.raises(FhirError, match=why):
        plan_transaction(bundle, LabelMap.default_map(), max_entries=10)
    with pytest.raises(FhirError, match="split"):
        plan_transaction({"resourceType": "Bundle", "type": "transaction", "entry": [{}] * 11},
                         LabelMap.default_map(), max_entries=10)


def test_scopes():
    auth = pytest.importorskip("agents.fhir.auth")
    s = auth.parse_scopes("openid fhirUser launch/patient patient/*.rs user/Observation.cruds system/Consent.u "
                          "user/Patient.read patient/Observation.rs?category=laboratory user/Condition.sr "
                          "user/Claim.write")
    assert [(x.context, x.resource, "".join(sorted(x.perms))) for x in s] == [
        ("patient", "*", "rs"), ("user", "Observation", "cdrsu"), ("system", "Consent", "u"),
        ("user", "Patient", "rs"), ("user", "Claim", "cdu")]
    p = auth.Principal("dr", auth.parse_scopes("patient/Observation.rs user/Condition.s"), patient="alice")
    assert p.may("Observation", "r", "alice") and not p.may("Observation", "r", "bob")
    assert p.may("Condition", "s", "bob") and not p.may("Condition", "r", "bob")
    assert not p.may("Observation", "c", "alice")
