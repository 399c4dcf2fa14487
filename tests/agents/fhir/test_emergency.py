"""Emergency access in FHIR (issues 16 x 17): an ETREAT Consent provision <-> the policy's emergency
clause, ``break_glass`` and the re-encryptions under it as AuditEvents, and a real break-glass on a
test swarm seen through ``GET /AuditEvent`` and ``ledger audit --fhir`` (all validated with
fhir.resources' R4B models)."""

from __future__ import annotations

import contextlib
import copy
import json
import pathlib

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from core.policy import parse
from agents.fhir import (ConsentMappingError, FhirError, LabelMap, break_glass_parameters, consent_to_policy,
                         parse_break_glass, policy_to_consent)
from agents.fhir.audit import BREAK_GLASS_SYSTEM, FLAG_SYSTEM, audit_bundle, audit_event
from agents.fhir.consent import BREAK_GLASS_EXTENSION
from agents.testing.smart import CARDIOLOGY_CONSENT

EXAMPLES = pathlib.Path(__file__).resolve().parents[4] / "shared" / "data" / "fhir-r4" / "hl7-r4-examples"
LABELS = LabelMap.default_map()
ACTREASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ATTRIBUTE = "https://emrshare.org/fhir/CodeSystem/attribute"
ETREAT = {"system": ACTREASON, "code": "ETREAT"}


def role_group(gid: str, *pairs: tuple[str, str]) -> dict:
    return {"resourceType": "Group", "id": gid, "type": "practitioner", "actual": False,
            "characteristic": [{"code": {"coding": [{"system": ATTRIBUTE, "code": a}]},
                                "valueCodeableConcept": {"text": v}, "exclude": False} for a, v in pairs]}


def actor(ref: str, role: str = "PRCP") -> dict:
    return {"role": {"coding": [{"system": PARTICIPATION, "code": role}]}, "reference": {"reference": ref}}


def break_glass(cosign=2, value=1, code="h") -> dict:
    return {"url": BREAK_GLASS_EXTENSION, "extension": [
        {"url": "cosign", "valuePositiveInt": cosign},
        {"url": "window", "valueDuration": {"value": value, "unit": code, "system": "http://unitsofmeasure.org",
                                            "code": code}}]}


def emergency_consent(**changes) -> dict:
    """The test Consent plus an ETREAT permit: doctors and nurses, two officers, one hour."""
    consent = copy.deepcopy(CARDIOLOGY_CONSENT)
    consent["contained"] += [role_group("er-doctors", ("role", "doctor")), role_group("er-nurses", ("role", "nurse"))]
    provision = {"id": "break-glass", "type": "permit", "purpose": [ETREAT],
                 "actor": [actor("#er-doctors"), actor("#er-nurses", "IRCP")], "extension": [break_glass()]}
    provision.update(changes)
    provision = {k: v for k, v in provision.items() if v is not None}
    consent["provision"]["provision"].append(provision)
    return consent


EMERGENCY_POLICY = """policy "cardiology" version 1
default deny
emergency roles doctor, nurse cosign 2 window 3600
rule cardio-read: allow read on all when role == "doctor" and department == "cardiology" approval auto"""


def r4b(kind: str, resource: dict) -> None:
    module = pytest.importorskip(f"fhir.resources.R4B.{kind.lower()}")
    getattr(module, kind).model_validate(resource)


def test_an_etreat_permit_is_the_emergency_clause_and_back():
    policy = consent_to_policy(emergency_consent(), labels=LABELS)
    assert policy == parse(EMERGENCY_POLICY)
    back = policy_to_consent(policy, patient="alice")
    r4b("Consent", back)
    [first, *rules] = back["provision"]["provision"]
    assert first["purpose"] == [ETREAT] and first["type"] == "permit" and first["id"] == "emergency"
    assert first["extension"] == [break_glass(2, 3600, "s")]
    assert [r["id"] for r in rules] == ["cardio-read"]
    assert consent_to_policy(back, labels=LABELS) == policy
    # no action and consentaction access both read; durations in min, h, d are seconds
    for action in (None, [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                       "code": "access"}]}]):
        for value, code, seconds in ((90, "min", 5400), (2, "d", 172800), (45, "s", 45)):
            c = emergency_consent(action=action, extension=[break_glass(1, value, code)])
            assert consent_to_policy(c, labels=LABELS).emergency.window == seconds


def test_a_policy_with_only_an_emergency_clause():
    policy = parse('policy "p" default allow approval auto\nemergency roles doctor cosign 1 window 60')
    consent = policy_to_consent(policy, patient="alice")
    r4b("Consent", consent)
    assert [p["purpose"] for p in consent["provision"]["provision"]] == [[ETREAT]]
    assert consent_to_policy(consent, labels=LABELS) == policy


@pytest.mark.parametrize("changes, path, why", [
    ({"extension": None}, "provision[1].extension", "does not choose them"),
    ({"extension": [{"url": BREAK_GLASS_EXTENSION, "extension": [{"url": "cosign", "valuePositiveInt": 2}]}]},
     "provision[1].extension[0]", "needs both"),
    ({"extension": [break_glass(2, 1, "mo")]}, "valueDuration", "UCUM s, min, h or d"),
    ({"extension": [break_glass(17)]}, "provision[1]", "cosign must be 1..16"),
    ({"extension": [break_glass(2, 8, "d")]}, "provision[1]", "window must be"),
    ({"extension": [break_glass(0)]}, "valuePositiveInt", "positive"),
    ({"extension": [break_glass(), break_glass()]}, "extension[1]", "one break-glass extension"),
    ({"extension": [break_glass(), {"url": "https://emrshare.org/fhir/StructureDefinition/approval",
                                    "valueCode": "patient"}]}, "extension[1]", "does not ask the patient"),
    ({"type": "deny"}, "provision[1].type", "leave ETREAT out"),
    ({"purpose": [ETREAT, {"system": ACTREASON, "code": "TREAT"}]}, "provision[1].purpose", "stands alone"),
    ({"class": [{"system": "https://emrshare.org/fhir/CodeSystem/label", "code": "labs"}]}, "provision[1].class",
     "nothing narrows it"),
    ({"period": {"end": "2030-01-01"}}, "provision[1].period", "nothing narrows it"),
    ({"actor": None}, "provision[1].actor", "names the roles"),
    ({"actor": [actor("Organization/hospital-b")]}, "actor[0].reference", "roles only"),
    ({"actor": [actor("#cardiologists")]}, "actor[0].reference", "roles only"),
    ({"actor": [actor("#er-doctors", "CST")]}, "actor[0].role", "recipients"),
    ({"provision": [{"type": "deny"}]}, "provision[1].provision", "one level"),
])
def test_what_the_emergency_clause_cannot_say_is_refused(changes, path, why):
    with pytest.raises(ConsentMappingError) as info:
        consent_to_policy(emergency_consent(**changes), labels=LABELS)
    assert path in info.value.expression and why in str(info.value), str(info.value)


def test_one_emergency_clause_unbounded_by_the_root_period():
    twice = emergency_consent()
    twice["provision"]["provision"].append(copy.deepcopy(twice["provision"]["provision"][-1]))
    with pytest.raises(ConsentMappingError, match="one emergency clause") as info:
        consent_to_policy(twice, labels=LABELS)
    assert info.value.expression == "Consent.provision.provision[2].purpose"
    bounded = emergency_consent()
    bounded["provision"]["period"] = {"end": "2030-01-01"}
    with pytest.raises(ConsentMappingError, match="has no period") as info:
        consent_to_policy(bounded, labels=LABELS)
    assert info.value.expression == "Consent.provision.period"


def _emergency_example() -> dict:
    path = EXAMPLES / "Consent-consent-example-Emergency.json"
    if not path.exists():
        pytest.skip("shared FHIR data not present")
    return json.loads(path.read_text())


def test_the_hl7_emergency_example():
    """Refused as written (ETREAT on the root, a custodian actor, no co-signers or window); the same
    intent written in the mapped form (an ETREAT permit of its own, the hospital's staff as recipients
    of the deny) maps and comes back to the same policy."""
    example = _emergency_example()
    with pytest.raises(ConsentMappingError) as info:
        consent_to_policy(example, labels=LABELS)
    assert info.value.expression == "Consent.provision.purpose[0]" and "root provision" in str(info.value)
    repaired = copy.deepcopy(example)
    deny = repaired["provision"]["provision"][0]
    deny["actor"][0]["role"]["coding"][0]["code"] = "PRCP"
    repaired["contained"] = [role_group("physicians", ("role", "doctor"))]
    repaired["provision"] = {"provision": [
        {"type": "permit", "purpose": [ETREAT], "actor": [actor("#physicians")], "extension": [break_glass(2, 4)]},
        deny]}
    policy = consent_to_policy(repaired, labels=LABELS)
    assert policy.to_text() == """policy "consent-example-Emergency" version 1
default allow approval auto
emergency roles doctor cosign 2 window 14400

rule provision-2:
  deny any on all
  when organization == "f001"
"""
    back = policy_to_consent(policy, patient="f001")
    r4b("Consent", back)
    assert consent_to_policy(back, labels=LABELS) == policy


# ------------------------------------------------------------------ $break-glass Parameters (pure)

officer_ids = st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=20)
reasons = st.text(st.characters(categories=("L", "N", "P"), include_characters=" "), min_size=1,
                  max_size=512).filter(str.strip)


@given(reasons, st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True),
       st.dictionaries(officer_ids, st.binary(min_size=64, max_size=64), min_size=1, max_size=16))
def test_break_glass_parameters_round_trip(reason, bg_id, cosigners):
    params = break_glass_parameters(reason, bg_id, cosigners)
    r4b("Parameters", params)
    asked = parse_break_glass(json.loads(json.dumps(params)))
    assert (asked.reason, asked.break_glass_id, asked.cosigners) == (reason, bg_id, cosigners)


GOOD = break_glass_parameters("why", "bg-1", {"olga": bytes(64)})


def _with(*changed) -> dict:
    return {"resourceType": "Parameters", "parameter": [*GOOD["parameter"][:2], *changed]}


@pytest.mark.parametrize("params, where", [
    ({"resourceType": "Bundle"}, "Parameters"),
    ({"resourceType": "Parameters", "parameter": GOOD["parameter"][1:]}, "Parameters.parameter"),
    (_with(), "Parameters.parameter"),
    (_with(GOOD["parameter"][2], GOOD["parameter"][2]), "Parameters.parameter[3]"),
    (_with({"name": "cosignature", "part": [{"name": "officer", "valueString": "olga"},
                                             {"name": "signature", "valueBase64Binary": "AAAA"}]}), "part"),
    (_with({"name": "cosignature", "part": [{"name": "officer", "valueString": "olga"}]}), "part"),
    (_with({"name": "cosignature", "part": [{"name": "officer", "valueString": "o"}, {"name": "officer",
                                                                                       "valueString": "p"}]}), "part[1]"),
    (_with(GOOD["parameter"][2], {"name": "purpose", "valueString": "x"}), "parameter[3]"),
    ({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": " "}, *GOOD["parameter"][1:]]},
     "parameter[0].valueString"),
    ({"resourceType": "Parameters", "parameter": [GOOD["parameter"][0], {"name": "breakGlassId", "valueId": "a b"},
                                                  GOOD["parameter"][2]]}, "parameter[1]"),
    ({"resourceType": "Parameters", "parameter": [*GOOD["parameter"], *[GOOD["parameter"][2]] * 16]},
     "Parameters.parameter"),
])
def test_bad_break_glass_parameters_are_refused(params, where):
    with pytest.raises(FhirError) as info:
        parse_break_glass(params)
    assert info.value.status == 400 and where in info.value.expression


# ------------------------------------------------------------------ AuditEvent (pure)

TX = bytes(range(32))
BG_EVENT = {"event": "break_glass", "actor": "dr-er", "time": 1767603600123, "height": 9, "tx": TX,
            "break_glass_id": "bg-3", "grant_id": "bg-abc", "doctor": "dr-er", "record_id": "rec-labs",
            "label": "labs", "reason": "unconscious in the ER", "cosigners": ["olga", "oscar"],
            "expires_at": 1767607200, "emergency": True}
ACCESS = {"event": "access", "actor": "peer-b1", "time": 1767603601000, "height": 10, "tx": TX[::-1],
          "grant_id": "bg-abc", "request_id": "bg-3", "record_id": "rec-labs", "doctor": "dr-er", "peer": "peer-b1",
          "share_index": 2, "emergency": True}


def _codes(concepts) -> set[str]:
    return {c["code"] for cc in concepts for c in cc.get("coding", [cc])}


def test_break_glass_audit_event():
    ae = audit_event(BG_EVENT, "alice")
    r4b("AuditEvent", ae)
    assert ae["meta"]["tag"] == [{"system": FLAG_SYSTEM, "code": "emergency"}]
    assert (ae["type"]["code"], [s["code"] for s in ae["subtype"]], ae["action"]) == ("110113", ["110127"], "E")
    etreat = {"system": ACTREASON, "code": "ETREAT", "display": "Emergency Treatment"}
    assert ae["purposeOfEvent"] == [{"coding": [etreat], "text": "unconscious in the ER"}]
    agents = {(a["who"]["identifier"]["value"], a["type"]["coding"][0]["code"], a["requestor"]) for a in ae["agent"]}
    assert agents == {("dr-er", "IRCP", True), ("olga", "VRF", False), ("oscar", "VRF", False)}
    [doctor] = [a for a in ae["agent"] if a["requestor"]]
    assert doctor["purposeOfUse"] == ae["purposeOfEvent"]
    [glass] = [e for e in ae["entity"] if e["what"].get("identifier", {}).get("system") == BREAK_GLASS_SYSTEM]
    details = {d["type"]: d["valueString"] for d in glass["detail"]}
    assert details == {"reason": "unconscious in the ER", "cosigners": "olga, oscar",
                       "expires-at": "2026-01-05T10:00:00.000Z"}


def test_reads_under_a_break_glass_carry_its_purpose_and_reason():
    bundle = audit_bundle([BG_EVENT, ACCESS, {**ACCESS, "grant_id": "sg-1", "emergency": None, "standing": True}],
                          "alice")
    r4b("Bundle", bundle)
    _, read, standing = (e["resource"] for e in bundle["entry"])
    assert (read["action"], read["subtype"][0]["code"]) == ("R", "read")
    assert read["meta"]["tag"] == [{"system": FLAG_SYSTEM, "code": "emergency"}]
    assert read["purposeOfEvent"][0]["text"] == "unconscious in the ER" and _codes(read["purposeOfEvent"]) == {"ETREAT"}
    assert any(e["what"].get("identifier") == {"system": BREAK_GLASS_SYSTEM, "value": "bg-3"} for e in read["entity"])
    # alone (its break-glass not in the trail): still ETREAT and flagged, without a reason
    alone = audit_event(ACCESS, "alice")
    assert "text" not in alone["purposeOfEvent"][0] and alone["meta"]["tag"][0]["code"] == "emergency"
    assert standing["meta"]["tag"] == [{"system": FLAG_SYSTEM, "code": "standing"}] and "purposeOfEvent" not in standing


def test_the_entries_of_one_access_batch_get_distinct_ids_and_late_reads_are_tagged():
    batch = [{**ACCESS, "emergency": None, "entry": n, "time": ACCESS["time"] + n} for n in range(3)]
    batch[2]["late"] = "revoked"
    bundle = audit_bundle([BG_EVENT, *batch, {**ACCESS, "height": 11}], "alice")
    r4b("Bundle", bundle)
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(set(ids)) == len(ids) == 5
    assert ids[1:4] == [f"10-{TX[::-1].hex()[:16]}-{n}" for n in range(3)] and ids[4] == f"11-{TX[::-1].hex()[:16]}"
    late = bundle["entry"][3]["resource"]
    assert late["meta"]["tag"] == [{"system": FLAG_SYSTEM, "code": "late-revoked"}]
    assert "meta" not in bundle["entry"][1]["resource"]


# ------------------------------------------------------------------ a real break-glass on a test swarm

OFFICERS = (("olga", "hospital-b", {"role": "nurse", "officer": True}),
            ("oscar", "hospital-b", {"role": "nurse", "officer": True}))
ECG = {"resourceType": "Observation", "id": "ecg-1", "status": "final", "code": {"text": "ECG"},
       "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                 "code": "laboratory"}]}]}


@pytest.mark.slow
async def test_break_glass_on_a_swarm_as_audit_events(tmp_path, capsys):
    """The patient sets an emergency Consent over FHIR; the dermatologist, whom the Consent does not
    let read, is refused (403); its ``$break-glass`` is refused without an ETREAT token, with too few
    officers, from the patient's facade and with bad Parameters, then served with two officers of its
    hospital; it reads the record again over FHIR within the window; the patient's ``GET /AuditEvent``
    and ``ledger audit --fhir`` show the break-glass (ETREAT, the reason, the officers) and the reads
    under it, flagged emergency."""
    requests = pytest.importorskip("requests")
    pytest.importorskip("hypercorn")
    from agents.cli.ledger import audit_main
    from agents.doctor import DoctorAgent, cosign_break_glass
    from agents.fhir import break_glass_parameters, record_id_for
    from agents.testing.consortium import user_config
    from agents.testing.smart import FhirDeployment

    with trio.fail_after(180):
        async with FhirDeployment.open(tmp_path / "dep") as dep, contextlib.AsyncExitStack() as stack:
            officers = []
            for subject, org, attrs in OFFICERS:
                config = user_config(dep.swarm.manifest, tmp_path / "dep" / "users" / subject, subject, org, attrs)
                officer = await stack.enter_async_context(DoctorAgent.open(config, node=dep.swarm.node))
                await officer.register(dep.swarm.token(subject, org, attrs, officer.enroll_id))
                officers.append(officer)
            alice_token = dep.issuer.token("alice", "patient/*.cruds", patient="alice")
            skin_token = dep.issuer.token("dr-skin", "user/*.rs", patient="alice")
            skin_etreat = dep.issuer.token("dr-skin", "user/*.rs", patient="alice", purpose="ETREAT")
            consent = emergency_consent()
            bundle = {"resourceType": "Bundle", "type": "transaction",
                      "entry": [{"resource": ECG, "request": {"method": "POST", "url": "Observation"}}]}

            def call(method, path, token, body=None):
                data = None if body is None else json.dumps(body)
                r = requests.request(method, dep.base + path, timeout=60, data=data,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/fhir+json"})
                return r.status_code, r.json()

            async def http(*args):
                return await trio.to_thread.run_sync(call, *args)

            assert (await http("POST", "", alice_token, bundle))[0] == 200
            status, stored = await http("PUT", "Consent/cardiology", alice_token, consent)
            assert status == 200 and stored["provision"]["provision"][0]["purpose"] == [ETREAT]
            status, outcome = await http("GET", "Observation/ecg-1?patient=alice", skin_token)
            assert status == 403 and outcome["resourceType"] == "OperationOutcome"

            rid, reason = record_id_for("Observation", "ecg-1"), "collapsed in the ward, no history"

            def signed(bg_id, who=officers):
                return break_glass_parameters(reason, bg_id, {
                    o.subject: cosign_break_glass(o.keys.ecdsa_private, bg_id, "dr-skin", "alice", rid, reason)
                    for o in who})

            op = "Observation/ecg-1/$break-glass?patient=alice"
            refused = [await http("POST", op, skin_token, signed("bg-1")),  # not an ETREAT token
                       await http("POST", op, skin_etreat, signed("bg-2", officers[:1])),  # one officer of two
                       await http("POST", op, dep.issuer.token("alice", "user/*.rs", purpose="ETREAT"),
                                  signed("bg-3")),  # the patient's own facade agent
                       await http("POST", op, skin_etreat, {"resourceType": "Parameters"}),
                       await http("POST", op.replace("ecg-1", "nope"), skin_etreat, signed("bg-4"))]
            assert [s for s, _ in refused] == [403, 403, 403, 400, 404]
            assert all(o["resourceType"] == "OperationOutcome" for _, o in refused)
            assert "ETREAT" in refused[0][1]["issue"][0]["diagnostics"]
            assert "not_allowed" in refused[1][1]["issue"][0]["diagnostics"]

            status, read = await http("POST", op, skin_etreat, signed("bg-fhir-1"))
            assert (status, read) == (200, ECG)
            assert (await http("POST", op, skin_etreat, signed("bg-fhir-1")))[0] == 409  # an id is used once
            status, read = await http("GET", "Observation/ecg-1?patient=alice", skin_token)
            assert (status, read) == (200, ECG)  # the facade reads under the break-glass grant for its window
            status, found = await http("GET", "Observation?patient=alice&category=laboratory", skin_token)
            assert status == 200 and [e["resource"] for e in found["entry"]] == [ECG]  # searches too

            def emergency_events(bundle):
                return [e["resource"] for e in bundle["entry"]
                        if any(t["code"] == "emergency" for t in e["resource"].get("meta", {}).get("tag", []))]

            with trio.move_on_after(60):  # the peers log their re-encryptions just after serving
                while True:
                    status, trail = await http("GET", "AuditEvent?patient=alice", alice_token)
                    if len(emergency_events(trail)) >= 3:
                        break
                    await trio.sleep(0.2)
            assert status == 200
            r4b("Bundle", trail)
            flagged = emergency_events(trail)
            [glass] = [e for e in flagged if e["subtype"][0]["code"] == "110127"]
            reads = [e for e in flagged if e["action"] == "R"]
            assert glass["purposeOfEvent"][0]["text"] == reason
            officers_seen = {a["who"]["identifier"]["value"] for a in glass["agent"]
                             if a["type"]["coding"][0]["code"] == "VRF"}
            assert officers_seen == {"olga", "oscar"}
            assert len(reads) >= 2 and all(r["purposeOfEvent"][0]["text"] == reason for r in reads)
            assert {a["who"]["identifier"]["value"] for r in reads for a in r["agent"] if a["requestor"]} == {"dr-skin"}

    capsys.readouterr()
    assert audit_main(["--data", str(tmp_path / "dep" / "swarm" / "agents" / "peer-a1"), "--patient", "alice",
                       "--fhir"]) == 0
    out = json.loads(capsys.readouterr().out)
    r4b("Bundle", out)
    # the same break-glass and reads under it (peer-a1's copy of the chain may be a block behind or ahead)
    from_cli = {e["id"]: e for e in emergency_events(out)}
    assert from_cli[glass["id"]] == glass
    assert any(e["action"] == "R" and e["purposeOfEvent"][0]["text"] == reason for e in from_cli.values())
