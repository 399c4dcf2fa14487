"""`emrshare fhir serve` as real processes: a swarm, a patient's and a doctor's facade (loopback TCP/HTTP)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("hypercorn")
import requests  # noqa: E402

from agents.testing.cli import stop_process  # noqa: E402
from agents.testing.fhir import generate_bundle  # noqa: E402
from agents.testing.smart import CARDIOLOGY_CONSENT, TokenIssuer  # noqa: E402

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _start(args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"{args} exited: {proc.stdout.read()}")
        m = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1) + "/"
    raise AssertionError(f"{args} did not start")


def test_fhir_serve_processes(tmp_path):
    data = tmp_path / "swarm"
    env = {**os.environ, "EMRSHARE_PASSPHRASE": "cli test passphrase"}
    issuer = TokenIssuer()
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    procs: list[subprocess.Popen] = []
    try:
        swarm = subprocess.Popen([sys.executable, "-m", "agents.cli", "swarm", "up", "--data", str(data)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append(swarm)
        deadline = time.monotonic() + 60
        while not (data / "manifest.json").exists() or ":0" in json.loads(
                (data / "manifest.json").read_text())["agents"]["orderer"]:
            assert time.monotonic() < deadline and swarm.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        common = ["--swarm", str(data)]
        _cli("patient", *common, "--subject", "alice", "--org", "hospital-a", "register", env=env)
        _cli("doctor", *common, "--subject", "dr-h", "--org", "hospital-b", "register",
             "--attr", "department=cardiology", env=env)
        serve = ["fhir", "serve", *common, "--listen", "127.0.0.1:0", "--issuer", issuer.issuer,
                 "--audience", issuer.audience, "--jwks-file", str(jwks)]
        patient, p_url = _start([*serve, "--subject", "alice", "--role", "patient"], env)
        procs.append(patient)
        assert (data / "users" / "alice" / "address").exists()  # doctors reach the patient's agent
        doctor, d_url = _start([*serve, "--subject", "dr-h", "--role", "doctor"], env)
        procs.append(doctor)

        def call(method: str, url: str, token: str, body=None) -> requests.Response:
            return requests.request(method, url, json=body, timeout=120,
                                    headers={"Authorization": f"Bearer {token}",
                                             "Content-Type": "application/fhir+json"})

        alice = issuer.token("alice", "patient/*.cruds", patient="alice")
        heart = issuer.token("dr-h", "user/*.rs")
        assert call("GET", p_url + "metadata", alice).json()["rest"][0]["interaction"] == [{"code": "transaction"}]
        assert call("GET", p_url + "metadata", heart).status_code == 403  # this facade does not act for dr-h
        assert call("PUT", p_url + "Consent/cardiology", alice, CARDIOLOGY_CONSENT).status_code == 200
        bundle = generate_bundle(11, 6)
        assert call("POST", p_url, alice, bundle).status_code == 200
        everything = call("GET", d_url + "Patient/alice/$everything", heart).json()
        assert everything["total"] == len(bundle["entry"])
        consent = call("GET", p_url + "Consent", alice).json()["entry"][0]["resource"]
        assert consent["provision"]["provision"][0]["id"] == "cardio-read"
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=20)
    assert not (data / "users" / "alice" / "address").exists()
