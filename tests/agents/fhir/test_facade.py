"""The FHIR facade on real loopback HTTP, driven by SMART's fhirclient (a client nobody here wrote).

One session (printed with ``-s``): the patient reads the CapabilityStatement, sets
its Consent (PUT), posts a Synthea transaction Bundle; the cardiologist the
Consent permits searches by type and category, runs ``$everything`` and reads by
id, and gets back every resource equal to what was posted (after FHIR's
transaction rule: ``urn:uuid`` references become ``Type/id``); the dermatologist
gets 403 with an OperationOutcome naming the deciding rule; the patient reads its
audit trail as AuditEvents that validate with fhir.resources' R4B models. Tokens
with a wrong scope, an expired one and none are refused.
"""

from __future__ import annotations

import json
import pathlib
import time

import pytest
import requests
import trio

pytest.importorskip("fhir.resources")
pytest.importorskip("hypercorn")

from fhirclient import client as fhir_client  # noqa: E402
from fhirclient.auth import FHIROAuth2Auth  # noqa: E402
from fhirclient.models.consent import Consent  # noqa: E402
from fhirclient.models.observation import Observation  # noqa: E402
from fhirclient.server import FHIRPermissionDeniedException  # noqa: E402

from agents.fhir import LabelMap, plan_transaction, record_id_for  # noqa: E402
from agents.testing.smart import CARDIOLOGY_CONSENT, FhirDeployment  # noqa: E402

pytestmark = pytest.mark.slow

FHIR = pathlib.Path(__file__).resolve().parents[4] / "shared" / "data" / "fhir-r4"
ALL = "user/*.cruds"


def synthea() -> dict:
    files = sorted((FHIR / "synthea-smart-r4").glob("*.json"))
    if not files:
        pytest.skip("shared FHIR data not present")
    return json.loads(files[0].read_text())


def connect(base: str, token: str) -> fhir_client.FHIRClient:
    """A fhirclient session holding a bearer token (fhirclient replaces its auth after /metadata)."""
    smart = fhir_client.FHIRClient(settings={"app_id": "emrshare-test", "api_base": base})

    def sign() -> None:
        auth = FHIROAuth2Auth()
        auth.access_token = token
        smart.server.auth = auth

    sign()
    smart.server.get_capability()
    sign()
    return smart


def session(dep: FhirDeployment, bundle: dict, log: list[str]) -> dict:
    """The fhirclient session (a worker thread: fhirclient is synchronous)."""
    say = log.append
    base, issue = dep.base, dep.issuer.token
    out: dict = {}

    alice = connect(base, issue("alice", "patient/*.cruds", patient="alice"))
    cs = alice.server.capabilityStatement
    say(f"alice: GET /metadata -> CapabilityStatement fhirVersion {cs.fhirVersion}, "
        f"{len(cs.rest[0].resource)} resource types, interactions {[i.code for i in cs.rest[0].interaction]}")
    consent = Consent(CARDIOLOGY_CONSENT)
    stored = consent.update(alice.server)
    say(f"alice: PUT /Consent/cardiology -> Consent version {stored['meta']['versionId']}, "
        f"{len(stored['provision']['provision'])} provision(s)")
    reply = alice.server.post_json("", bundle).json()
    say(f"alice: POST / transaction Bundle of {len(bundle['entry'])} entries -> "
        f"{reply['type']} with {sum(e['response']['status'].startswith('201') for e in reply['entry'])} x 201 Created")
    out["consent"] = stored

    heart = connect(base, issue("dr-heart", ALL, patient="alice", purpose="TREAT"))
    labs = list(Observation.where({"patient": "alice", "category": "laboratory"}).perform_resources_iter(heart.server))
    say(f"dr-heart: GET /Observation?patient=alice&category=laboratory -> {len(labs)} Observations")
    out["labs"] = [o.as_json() for o in labs]
    everything = heart.server.request_json("Patient/alice/$everything")
    say(f"dr-heart: GET /Patient/alice/$everything -> searchset of {everything['total']} resources")
    out["everything"] = everything
    first = out["labs"][0]["id"]
    one = Observation.read(first, heart.server)
    say(f"dr-heart: GET /Observation/{first} -> {one.code.coding[0].display!r} {one.valueQuantity.value} "
        f"{one.valueQuantity.unit}")
    out["read"] = one.as_json()

    skin = connect(base, issue("dr-skin", ALL, patient="alice"))
    try:
        Observation.read(first, skin.server)
        out["skin"] = None
    except FHIRPermissionDeniedException as exc:
        out["skin"] = (exc.response.status_code, exc.response.json())
        say(f"dr-skin: GET /Observation/{first} -> HTTP {exc.response.status_code} "
            f"{exc.response.json()['issue'][0]['diagnostics']}")

    # dr-skin's refused request committed through dr-skin's peer: alice's peer shows it at its next block;
    # dr-heart's reads are logged in the peers' next access batches (agents.peer._audit)
    deadline = time.monotonic() + 60
    while True:
        audit = alice.server.request_json("AuditEvent?patient=alice")
        codes = {(e["resource"]["subtype"][0]["code"], e["resource"]["outcome"]) for e in audit["entry"]}
        if (("access_request", "4") in codes and any(c == "read" for c, _ in codes)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    kinds: dict[str, int] = {}
    for e in audit["entry"]:
        code = e["resource"]["subtype"][0]["code"]
        kinds[code] = kinds.get(code, 0) + 1
    say(f"alice: GET /AuditEvent?patient=alice -> {audit['total']} AuditEvents {kinds}")
    out["audit"] = audit
    return out


async def test_fhirclient_session(tmp_path, capsys):
    bundle = synthea()
    expected = {f"{e.resource_type}/{e.resource_id}": dict(e.resource)
                for e in plan_transaction(bundle, LabelMap.default_map(), max_entries=1000)}
    log: list[str] = []
    with trio.fail_after(240):
        async with FhirDeployment.open(tmp_path) as dep:
            try:
                out = await trio.to_thread.run_sync(session, dep, bundle, log)
            except requests.HTTPError as exc:
                raise AssertionError(f"{log}\n{exc.response.status_code} {exc.response.text}") from None
            with capsys.disabled():
                print("\n" + "\n".join(log))

    # the Consent became the policy, and reads back the same
    assert out["consent"]["provision"]["provision"][0]["id"] == "cardio-read"
    # $everything: every posted resource, equal to what was posted (references resolved)
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
           for e in out["everything"]["entry"] if e["search"]["mode"] == "match"}
    assert got == expected
    assert out["everything"]["entry"][0]["resource"]["resourceType"] == "Patient"
    # the type search: exactly the posted laboratory Observations, equal as fhirclient reads them
    labs = {k: v for k, v in expected.items() if v["resourceType"] == "Observation"
            and any(c.get("code") == "laboratory" for cat in v.get("category", []) for c in cat.get("coding", []))}
    assert {f"Observation/{o['id']}" for o in out["labs"]} == set(labs)
    for o in out["labs"]:
        assert o == Observation(labs[f"Observation/{o['id']}"]).as_json()
    assert out["read"] == Observation(labs[f"Observation/{out['read']['id']}"]).as_json()
    # the dermatologist: 403 with the policy's deciding rule
    status, outcome = out["skin"]
    assert status == 403 and outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "default"
    # the audit trail validates as R4 AuditEvents, and shows the stores, the grant and the accesses
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(out["audit"])
    kinds = [e["resource"]["subtype"][0]["code"] for e in out["audit"]["entry"]]
    for e in out["audit"]["entry"]:
        AuditEvent.model_validate(e["resource"])
    assert kinds.count("create") == len(expected)
    assert "grant" in kinds and "read" in kinds and "access_request" in kinds
    denied = [e["resource"] for e in out["audit"]["entry"] if e["resource"]["subtype"][0]["code"] == "access_request"
              and e["resource"]["outcome"] == "4"]
    assert denied and "dr-skin" in json.dumps(denied[0]["agent"])


async def test_tokens_refused(tmp_path):
    """No token, an expired token, a token with the wrong scope, another issuer's token: refused."""
    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path) as dep:
            def probe() -> list[tuple[int, dict, str]]:
                url = dep.base + "Observation?patient=alice"
                issue = dep.issuer.token
                other = type(dep.issuer)()  # same issuer name and audience, another key
                cases = [None,
                         issue("dr-heart", ALL, expires_in=-120),
                         issue("dr-heart", "user/Patient.rs"),
                         issue("dr-heart", "patient/Observation.rs", patient="bob"),
                         other.token("dr-heart", ALL),
                         issue("mallory", ALL)]
                out = []
                for token in cases:
                    headers = {"Accept": "application/fhir+json"}
                    if token:
                        headers["Authorization"] = f"Bearer {token}"
                    r = requests.get(url, headers=headers, timeout=30)
                    out.append((r.status_code, r.json(), r.headers.get("www-authenticate", "")))
                r = requests.get(dep.base + "metadata", timeout=30)
                out.append((r.status_code, r.json(), r.headers.get("www-authenticate", "")))
                return out

            results = await trio.to_thread.run_sync(probe)
    statuses = [s for s, _, _ in results]
    assert statuses == [401, 401, 403, 403, 401, 403, 401]
    for status, body, challenge in results:
        assert body["resourceType"] == "OperationOutcome"
        if status == 401:
            assert challenge.startswith("Bearer")
    assert "expired" in results[1][1]["issue"][0]["diagnostics"]
    assert "insufficient_scope" in results[2][2]


async def test_hostile_requests_get_operation_outcomes(tmp_path):
    """Oversized, mistyped, malformed and invalid bodies, wrong agents and unknown routes: each is an
    OperationOutcome with the right status, and nothing is stored."""
    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path) as dep:
            dep.facade.config.max_body_bytes = 4096
            alice = dep.issuer.token("alice", "patient/*.cruds", patient="alice")
            heart = dep.issuer.token("dr-heart", ALL, patient="alice")
            obs_bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Observation", "code": {"text": "x"}},
                 "request": {"method": "POST", "url": "Observation"}}]}
            obs_ok = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}},
                 "request": {"method": "POST", "url": "Observation"}}]}

            def probe() -> list[tuple[int, dict]]:
                def call(method, path, token, body=None, ctype="application/fhir+json"):
                    headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
                    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
                    r = requests.request(method, dep.base + path, data=data, headers=headers, timeout=30)
                    return r.status_code, r.json()

                return [
                    call("POST", "", alice, b"{" + b" " * 5000 + b"}"),
                    call("POST", "", alice, obs_ok, ctype="text/plain"),
                    call("POST", "", alice, b'{"resourceType": "Bundle", "type": "transac'),
                    call("POST", "", alice, obs_bad),
                    call("POST", "", alice, {"resourceType": "Bundle", "type": "collection"}),
                    call("POST", "", heart, obs_ok),
                    call("POST", "", dep.issuer.token("alice", "patient/Observation.rs", patient="alice"), obs_ok),
                    call("PUT", "Consent/other", alice, {**CARDIOLOGY_CONSENT}),
                    call("GET", "Observation?patient=alice&code=1234", heart),
                    call("GET", "Nothing/here/at/all", heart),
                    call("GET", "AuditEvent?patient=alice", heart),
                    call("GET", "Observation?patient=bob", alice),
                    call("POST", "", alice, obs_ok),
                    call("POST", "", alice, obs_ok),
                    call("GET", "observation/o1?patient=alice", heart),
                    call("GET", "Observation/o1%20x?patient=alice", heart),
                    call("GET", "Observation?patient=alice", heart),  # no policy yet: nothing listed
                    call("GET", "metadata", heart),
                ]

            results = await trio.to_thread.run_sync(probe)
            records = await dep.agents["alice"].records()
            # every slot in flight taken: the next request is a 429, before any work
            limiter = dep.facade._in_flight  # noqa: SLF001 - filled by hand, deterministic
            for i in range(dep.facade.config.max_in_flight):
                limiter.acquire_on_behalf_of_nowait(f"slot-{i}")

            def busy() -> tuple[int, dict, str | None]:
                r = requests.get(dep.base + "metadata", headers={"Authorization": f"Bearer {heart}"}, timeout=30)
                return r.status_code, r.json(), r.headers.get("retry-after")

            throttled = await trio.to_thread.run_sync(busy)
            for i in range(dep.facade.config.max_in_flight):
                limiter.release_on_behalf_of(f"slot-{i}")
    assert throttled[0] == 429 and throttled[1]["issue"][0]["code"] == "throttled" and throttled[2] == "1"
    assert [s for s, _ in results] == [413, 415, 400, 422, 400, 403, 403, 400, 400, 404, 403, 403, 200, 409, 404, 400, 200, 200]
    assert all(body["resourceType"] in ("OperationOutcome", "Bundle") for _, body in results[:-1])
    assert "status" in results[3][1]["issue"][0]["diagnostics"]
    empty = results[-2][1]
    assert empty["total"] == 0 and empty["entry"][0]["search"]["mode"] == "outcome"
    assert "visible to you" in empty["entry"][0]["resource"]["issue"][0]["diagnostics"]
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    CapabilityStatement.model_validate(results[-1][1])  # the CapabilityStatement is valid R4(B)
    assert [r["record_id"] for r in records] == [record_id_for("Observation", "o1")]
    assert records[0]["media_type"] == "application/fhir+json; fhirVersion=4.0"


async def test_cli_store_and_fhir_audit(tmp_path, capsys):
    """``patient store`` takes a Bundle, a resource and a directory through the facade's mapping,
    refuses to call non-FHIR content FHIR; ``ledger audit --fhir`` writes a valid AuditEvent Bundle."""
    from agents.cli.fhir import FhirCliError, store_path
    from agents.cli.ledger import audit_main
    from agents.testing.fhir import generate_bundle

    folder = tmp_path / "records"
    folder.mkdir()
    bundle = generate_bundle(7, 8)
    (folder / "bundle.json").write_text(json.dumps(bundle))
    (folder / "allergy.json").write_text(json.dumps({"resourceType": "AllergyIntolerance", "id": "a1",
                                                     "patient": {"reference": "Patient/alice"}}))
    note = tmp_path / "note.txt"
    note.write_text("not FHIR")
    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path / "dep") as dep:
            alice = dep.agents["alice"]
            stored, lines = await store_path(alice, folder, label=None, media_type=None, record_id=None)
            with pytest.raises(FhirCliError, match="name its media type"):
                await store_path(alice, note, label="notes", media_type=None, record_id=None)
            with pytest.raises(FhirCliError, match="not stored as application/fhir"):
                await store_path(alice, note, label="notes", media_type="application/fhir+json", record_id=None)
            (tmp_path / "bad.json").write_text('{"resourceType": "Observation"}')
            with pytest.raises(FhirCliError, match="not valid FHIR R4") as info:
                await store_path(alice, tmp_path / "bad.json", label=None, media_type=None, record_id=None)
            assert str(info.value).count("fix the resource") == 1  # one what-to-do, not the facade's twice
            _, plain = await store_path(alice, note, label="notes", media_type="text/plain", record_id="note-1")
            records = await alice.records()
    assert lines[0].startswith(f"stored {len(bundle['entry']) + 1} FHIR resources from 2 file(s)")
    assert len(stored) == len(bundle["entry"]) + 1 and all(s["media_type"] == "application/fhir+json" for s in stored)
    assert plain == ["stored note-1 under label notes (text/plain)"]
    kinds = {r["record_id"]: r["media_type"] for r in records}
    assert kinds.pop("note-1") == "text/plain"
    assert record_id_for("AllergyIntolerance", "a1") in kinds
    assert set(kinds.values()) == {"application/fhir+json; fhirVersion=4.0"} and len(kinds) == len(bundle["entry"]) + 1

    capsys.readouterr()
    assert audit_main(["--data", str(tmp_path / "dep" / "swarm" / "agents" / "peer-a1"), "--patient", "alice",
                       "--fhir"]) == 0
    out = json.loads(capsys.readouterr().out)
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(out)
    assert out["type"] == "collection" and len(out["entry"]) == len(records)
    assert {e["resource"]["subtype"][0]["code"] for e in out["entry"]} == {"create"}


def _pki(tmp: pathlib.Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    out = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("test ca", ca_key, "test ca", ca_key, ca=True)
    for who, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        (tmp / f"{who}.pem").write_bytes(cert(who, key, "test ca", ca_key, san=san).public_bytes(serialization.Encoding.PEM))
        (tmp / f"{who}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        out[who], out[f"{who}_key"] = str(tmp / f"{who}.pem"), str(tmp / f"{who}.key")
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["ca"] = str(tmp / "ca.pem")
    return out


async def test_mutual_tls(tmp_path):
    """With --certfile/--keyfile/--client-ca: HTTPS, and a client without a certificate of the CA is
    refused at the handshake; with one, the bearer token is still required."""
    pki = _pki(tmp_path)
    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path / "dep") as dep:
            async with trio.open_nursery() as nursery:
                (url,) = await nursery.start(lambda task_status: dep.facade.serve(
                    ["127.0.0.1:0"], certfile=pki["server"], keyfile=pki["server_key"], client_ca=pki["ca"],
                    task_status=task_status))
                assert url.startswith("https://")
                token = dep.issuer.token("dr-heart", ALL)

                def probe() -> tuple[int, int, str]:
                    with_cert = requests.get(url + "/metadata", verify=pki["ca"], timeout=30,
                                             cert=(pki["client"], pki["client_key"]),
                                             headers={"Authorization": f"Bearer {token}"})
                    no_token = requests.get(url + "/metadata", verify=pki["ca"], timeout=30,
                                            cert=(pki["client"], pki["client_key"]))
                    try:
                        requests.get(url + "/metadata", verify=pki["ca"], timeout=30,
                                     headers={"Authorization": f"Bearer {token}"})
                        refused = "no"
                    except requests.exceptions.ConnectionError as exc:  # SSLError is one
                        refused = type(exc).__name__
                    return with_cert.status_code, no_token.status_code, refused

                ok, no_token, refused = await trio.to_thread.run_sync(probe)
                nursery.cancel_scope.cancel()
    assert (ok, no_token) == (200, 401) and refused != "no"


async def test_a_patient_id_that_is_no_ledger_id_is_a_400(tmp_path):
    """Attack: a client names a patient the ledger cannot name (non-ASCII, too long, a slash);
    the facade must refuse it as the client's error (400), before any peer is asked, not
    answer 500 'exception' relaying the peers' internal refusal."""
    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path) as dep:
            heart = dep.issuer.token("dr-heart", ALL)

            def probe() -> list[tuple[int, str]]:
                out = []
                for path in ("Patient/%C3%A9/$everything", "Patient/" + "a" * 300 + "/$everything",
                             "Observation?patient=a/b", "Observation/o1?patient=%00", "Consent?patient=%C3%A9"):
                    r = requests.get(dep.base + path, headers={"Authorization": f"Bearer {heart}"}, timeout=30)
                    out.append((r.status_code, r.json()["issue"][0]["diagnostics"]))
                return out

            results = await trio.to_thread.run_sync(probe)
    assert [s for s, _ in results] == [400] * 5, results
    assert all("patient id" in d and "peer" not in d for _, d in results)


async def test_a_deeply_nested_body_is_a_400(tmp_path):
    """Attack: a token holder posts 100 000 nested arrays (100 kB, well under the body bound);
    Python's JSON decoder raises RecursionError, which is no ValueError: the facade answered
    500 and logged a traceback per request. It is the client's malformed body (400)."""
    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path) as dep:
            alice = dep.issuer.token("alice", "patient/*.cruds", patient="alice")

            def probe() -> list[tuple[int, dict]]:
                out = []
                for method, path in (("POST", ""), ("PUT", "Consent/cardiology")):
                    r = requests.request(method, dep.base + path, data=b"[" * 100_000, timeout=30,
                                         headers={"Authorization": f"Bearer {alice}",
                                                  "Content-Type": "application/fhir+json"})
                    out.append((r.status_code, r.json()))
                return out

            results = await trio.to_thread.run_sync(probe)
    assert [s for s, _ in results] == [400, 400]
    assert all("not JSON" in body["issue"][0]["diagnostics"] for _, body in results)


async def test_a_hostile_patients_deeply_nested_record_does_not_kill_a_doctors_facade(tmp_path):
    """Attack: a patient stores a 'FHIR' record of 100 000 nested arrays (its own agent does not
    validate what it seals) and lets doctors read it; a hospital's facade decoding it for a
    doctor crashed its whole process (C stack overflow under py_ecc's recursion limit). It must
    answer the one read with an integrity error and keep serving."""
    from agents.fhir.labels import FHIR_MEDIA_TYPE

    with trio.fail_after(120):
        async with FhirDeployment.open(tmp_path) as dep:
            alice = dep.agents["alice"]
            await alice.set_policy('policy "all" version 1\ndefault deny\nrule docs:\n'
                                   '  allow read on all when role == "doctor"\n  approval auto\n')
            label = dep.facade.labels.labels_for_type("Observation", None)[0]
            await alice.store(b"[" * 100_000, label=label, media_type=FHIR_MEDIA_TYPE,
                              record_id=record_id_for("Observation", "deep"))
            heart = dep.issuer.token("dr-heart", ALL, patient="alice")

            def probe() -> list[int]:
                out = []
                for path in ("Observation/deep?patient=alice", "metadata"):
                    r = requests.get(dep.base + path, headers={"Authorization": f"Bearer {heart}"}, timeout=60)
                    out.append((r.status_code, r.json()["resourceType"]))
                return out

            results = await trio.to_thread.run_sync(probe)
    assert results == [(502, "OperationOutcome"), (200, "CapabilityStatement")]
