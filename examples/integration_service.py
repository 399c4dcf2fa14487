"""A hospital integration service using emrshare's embedding API against a running swarm.

    emrshare swarm up --data example-swarm         # in another terminal
    python examples/integration_service.py example-swarm/manifest.json [WORKDIR]

(A swarm of its own: in the README walkthrough's swarm-data, "alice" is already
registered with other keys, and this service's enrollment is refused.)

It plays both sides over TCP, each agent with its own bus node as separate
services would: the patient app of "alice" (listening, so doctors can reach
it) uploads a FHIR bundle under the label "cardiology" and sets a policy; the
EHR connector of cardiologist "dr-heart" lists her records and reads the
bundle. Keys and local state live under WORKDIR (default ./integration-data),
encrypted with a key file; run it twice and the agents continue where they
were. Enrollment tokens come from the organizations' registrar — here, the
local swarm's secrets next to the manifest; each token is bound to the key the
agent enrolls with (``agent.enroll_id``), expires, and enrolls once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from agents import DoctorAgent, KeyStore, Manifest, PatientAgent, SwarmFiles, UserConfig
from agents.testing.fhir import check_bundle, encode_bundle, generate_bundle

# alice's policy (docs/policy.md): cardiologists may read her cardiology records
# for treatment, without asking her each time; everything else is refused.
POLICY = """
policy "alice" version 1
default deny
rule cardiology:
  allow read on label "cardiology" when role == "doctor" and department == "cardiology"
  purpose in ["treatment"] approval auto
"""


async def run(manifest_path: Path, workdir: Path) -> bytes:
    """Store a bundle as alice, read it back as dr-heart; return what the doctor read."""
    manifest = Manifest.from_json(manifest_path.read_text())
    registrar = SwarmFiles(manifest_path.parent)  # stands in for each hospital's registration desk
    key_file = workdir / "service.key"
    if not key_file.exists():
        KeyStore.create_key_file(key_file)

    def config(subject: str, org: str, attributes: dict, **extra) -> UserConfig:
        return UserConfig(subject=subject, org=org, attributes=attributes, data_dir=workdir / subject,
                          manifest=manifest, key_file=key_file, **extra)

    patient_attrs = {"role": "patient"}
    doctor_attrs = {"role": "doctor", "department": "cardiology"}
    async with PatientAgent.open(config("alice", "hospital-a", patient_attrs, listen="tcp://127.0.0.1:0")) as alice:
        await alice.register(registrar.token("alice", "hospital-a", patient_attrs, alice.enroll_id))
        bundle = generate_bundle(seed=42, size_kib=24)
        check_bundle(bundle, require_resolved=True)
        record_id = await alice.store(encode_bundle(bundle), label="cardiology",
                                      media_type="application/fhir+json")
        await alice.set_policy(POLICY)
        print(f"alice stored {record_id} and listens at {alice.address}")

        # the doctor's service knows where the patient's app listens
        doctor_cfg = config("dr-heart", "hospital-b", doctor_attrs, routes={"alice": alice.address})
        async with DoctorAgent.open(doctor_cfg) as heart:
            await heart.register(registrar.token("dr-heart", "hospital-b", doctor_attrs, heart.enroll_id))
            listed = await heart.records("alice", label="cardiology")
            print(f"dr-heart sees {len(listed)} cardiology record(s) of alice")
            data = await heart.read("alice", record_id, purpose="treatment")
            entries = json.loads(data)["entry"]
            print(f"dr-heart read {len(data)} bytes: a Bundle of {len(entries)} resources")
            return data


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    workdir = Path(argv[1] if len(argv) > 1 else "integration-data")
    workdir.mkdir(parents=True, exist_ok=True)
    trio.run(run, Path(argv[0]), workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
