"""agents.testing.fhir: the synthetic FHIR R4 bundle generator and the structural checker, against real data."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.testing.fhir import BundleError, check_bundle, encode_bundle, generate_bundle

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4"
# every FHIR resource file (package.json is the npm package manifest, not a resource)
REAL = sorted(p for p in DATA.rglob("*.json") if p.name != "package.json") if DATA.exists() else []


def _real(kind: str) -> list[pathlib.Path]:
    bundles = [p for p in REAL if json.loads(p.read_bytes()).get("resourceType") == "Bundle"]
    return bundles if kind == "Bundle" else [p for p in REAL if p not in bundles]


@pytest.mark.parametrize("size", [2, 16, 64, 200])
def test_generated_sizes_and_validity(size):
    bundle = generate_bundle(11, size)
    n = len(encode_bundle(bundle))
    assert size * 1024 <= n <= size * 1024 + 2048
    check_bundle(bundle, require_resolved=True)
    assert bundle["type"] == "transaction"


def test_deterministic_and_seed_dependent():
    assert encode_bundle(generate_bundle(5, 20)) == encode_bundle(generate_bundle(5, 20))
    assert encode_bundle(generate_bundle(5, 20)) != encode_bundle(generate_bundle(6, 20))


def test_clinical_content():
    bundle = generate_bundle(3, 40)
    resources = [e["resource"] for e in bundle["entry"]]
    types = {r["resourceType"] for r in resources}
    assert {"Patient", "Encounter", "Observation", "Condition"} <= types
    codes = {(c["system"], c["code"]) for r in resources if r["resourceType"] == "Observation"
             for c in r["code"]["coding"]}
    assert ("http://loinc.org", "8867-4") in codes  # heart rate
    assert ("http://loinc.org", "85354-9") in codes  # blood pressure panel
    conds = [c for r in resources if r["resourceType"] == "Condition" for c in r["code"]["coding"]]
    assert conds and all(c["system"] == "http://snomed.info/sct" for c in conds)
    bp = next(r for r in resources
              if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "85354-9")
    assert {c["code"]["coding"][0]["code"] for c in bp["component"]} == {"8480-6", "8462-4"}
    patient = resources[0]
    assert patient["resourceType"] == "Patient" and patient["identifier"][0]["value"].startswith("MRN")


def test_medication_requests_when_conditions_have_drugs():
    seen = False
    for seed in range(20):
        for e in generate_bundle(seed, 30)["entry"]:
            r = e["resource"]
            if r["resourceType"] == "MedicationRequest":
                seen = True
                assert r["medicationCodeableConcept"]["coding"][0]["system"].endswith("rxnorm")
                assert r["intent"] == "order" and r["subject"]["reference"].startswith("urn:uuid:")
    assert seen


@pytest.mark.parametrize("size", [0, 1, 201, "8"])
def test_size_knob_is_checked(size):
    with pytest.raises(ValueError):
        generate_bundle(1, size)


@settings(max_examples=15)
@given(seed=st.integers(min_value=0, max_value=2**64), size=st.integers(min_value=2, max_value=24))
def test_any_seed_gives_a_valid_bundle(seed, size):
    check_bundle(generate_bundle(seed, size), require_resolved=True)


@pytest.mark.skipif(not REAL, reason="shared FHIR data not present")
@pytest.mark.parametrize("path", _real("Bundle"), ids=lambda p: p.name)
def test_real_bundles_pass(path):
    check_bundle(json.loads(path.read_bytes()))


@pytest.mark.skipif(not REAL, reason="shared FHIR data not present")
def test_real_resources_pass_in_a_collection():
    resources = [json.loads(p.read_bytes()) for p in _real("other")]
    assert len(resources) > 30
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": f"https://example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                        for r in resources]}
    check_bundle(bundle)


@pytest.mark.skipif(not REAL, reason="shared FHIR data not present")
def test_synthea_bundles_are_self_contained():
    for path in (DATA / "synthea-smart-r4").glob("*.json"):
        check_bundle(json.loads(path.read_bytes()), require_resolved=True)


def _broken(mutate):
    bundle = copy.deepcopy(generate_bundle(9, 8))
    mutate(bundle)
    with pytest.raises(BundleError) as info:
        check_bundle(bundle, require_resolved=True)
    return info.value.problems


def _first(bundle, rtype):
    return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def test_checker_finds_problems():
    assert "not an R4 Bundle.type" in _broken(lambda b: b.update(type="pile"))[0]
    assert "does not resolve" in _broken(
        lambda b: _first(b, "Observation")["resource"]["subject"].update(reference="urn:uuid:nope"))[0]
    assert "required element status" in _broken(lambda b: _first(b, "Observation")["resource"].pop("status"))[0]
    assert "required element class" in _broken(lambda b: _first(b, "Encounter")["resource"].pop("class"))[0]
    assert "appears twice" in _broken(lambda b: b["entry"][1].update(fullUrl=b["entry"][0]["fullUrl"]))[0]
    assert "need a request" in _broken(lambda b: b["entry"][0].pop("request"))[0]
    assert "not a FHIR id" in _broken(lambda b: b["entry"][0]["resource"].update(id="has space"))[0]
    assert "status" in _broken(lambda b: _first(b, "Observation")["resource"].update(status="done"))[0]
    assert "Coding" in _broken(lambda b: _first(b, "Observation")["resource"]["code"].update(coding=[{}]))[0]
    assert "not a FHIR reference" in _broken(
        lambda b: _first(b, "Encounter")["resource"]["subject"].update(reference="??"))[0]
    with pytest.raises(BundleError):
        check_bundle({"resourceType": "Patient"})
    # a relative reference to a missing entry is fine unless resolution is required
    b = generate_bundle(9, 4)
    _first(b, "Encounter")["resource"]["subject"]["reference"] = "Patient/elsewhere"
    check_bundle(b)
    with pytest.raises(BundleError, match="does not resolve"):
        check_bundle(b, require_resolved=True)


def test_generated_bundles_parse_with_fhirclient_r4_models():
    pytest.importorskip("fhirclient")
    from fhirclient.models.bundle import Bundle

    for seed, size in ((1, 4), (2, 64), (3, 200)):
        parsed = Bundle(generate_bundle(seed, size), strict=True)
        assert parsed.type == "transaction" and len(parsed.entry) > 3
    with pytest.raises(Exception):
        bad = generate_bundle(1, 4)
        bad["entry"][0]["resource"]["gender"] = 17
        Bundle(bad, strict=True)
