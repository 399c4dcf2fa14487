"""A SMART-style token issuer for tests and benchmarks of the FHIR facade.

:class:`TokenIssuer` holds a fresh ES256 key (from ``cryptography``), publishes
its JWKS (:meth:`TokenIssuer.jwks`, :meth:`TokenIssuer.write_jwks`) and signs
access tokens with PyJWT (:meth:`TokenIssuer.token`): ``iss``, ``aud``,
``sub``, ``scope``, ``exp`` and, when given, the launch context ``patient``
and ``purpose_of_use``. For tests and experiments only: an authorization
server (a hospital's identity provider) issues the real tokens.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["TokenIssuer"]


class TokenIssuer:
    """Issues ES256 access tokens for ``audience`` as ``issuer`` (see the module docstring)."""

    def __init__(self, issuer: str = "https://idp.test.invalid", audience: str = "emrshare-fhir"):
        self.issuer, self.audience = issuer, audience
        self.kid = "test-" + secrets.token_hex(4)
        self._key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]}

    def write_jwks(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.jwks()))
        return Path(path)

    def token(self, subject: str, scope: str, *, patient: str | None = None, expires_in: int = 300,
              purpose: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": subject, "scope": scope,
                                "iat": now, "exp": now + expires_in, "jti": secrets.token_hex(8), **claims}
        if patient is not None:
            body["patient"] = patient
        if purpose is not None:
            body["purpose_of_use"] = purpose
        return jwt.encode(body, self._key, algorithm="ES256", headers={"kid": self.kid})


PATIENT = ("alice", "hospital-a", {"role": "patient"})
CARDIOLOGIST = ("dr-heart", "hospital-b", {"role": "doctor", "department": "cardiology"})
DERMATOLOGIST = ("dr-skin", "hospital-b", {"role": "doctor", "department": "dermatology"})

# the test Consent: cardiologists (of any hospital) read every record, pre-approved (docs/fhir.md)
CARDIOLOGY_CONSENT: dict[str, Any] = {
    "resourceType": "Consent",
    "id": "cardiology",
    "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/alice"},
    "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
    "contained": [{"resourceType": "Group", "id": "cardiologists", "type": "practitioner", "actual": False,
                   "characteristic": [
                       {"code": {"coding": [{"system": "https://emrshare.org/fhir/CodeSystem/attribute",
                                             "code": "role"}]},
                        "valueCodeableConcept": {"text": "doctor"}, "exclude": False},
                       {"code": {"coding": [{"system": "https://emrshare.org/fhir/CodeSystem/attribute",
                                             "code": "department"}]},
                        "valueCodeableConcept": {"text": "cardiology"}, "exclude": False}]}],
    "provision": {"provision": [{
        "id": "cardio-read", "type": "permit",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "PRCP"}]},
                   "reference": {"reference": "#cardiologists"}}],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}],
    }]},
}


class FhirDeployment:
    """A local swarm with a patient (alice), a cardiologist (dr-heart) and a dermatologist (dr-skin),
    and one FHIR facade acting for the three, served on loopback HTTP. Open with :meth:`open`;
    ``base`` is the facade's URL (ending in ``/``), ``issuer`` mints tokens for it."""

    def __init__(self) -> None:
        self.swarm: Any = None
        self.agents: dict[str, Any] = {}
        self.facade: Any = None
        self.issuer = TokenIssuer()
        self.base = ""

    @classmethod
    def open(cls, data_dir: Path, *, request_timeout: float = 10.0):
        import contextlib

        import trio

        from agents.doctor import DoctorAgent
        from agents.fhir.app import Facade, FacadeConfig
        from agents.fhir.auth import TokenVerifier
        from agents.patient import PatientAgent
        from agents.swarm import Swarm, SwarmSpec
        from agents.testing.consortium import user_config

        @contextlib.asynccontextmanager
        async def opened():
            dep = cls()
            async with contextlib.AsyncExitStack() as stack:
                dep.swarm = await stack.enter_async_context(Swarm.open(SwarmSpec(data_dir=Path(data_dir) / "swarm")))
                for who, kind in ((PATIENT, PatientAgent), (CARDIOLOGIST, DoctorAgent), (DERMATOLOGIST, DoctorAgent)):
                    subject, org, attrs = who
                    config = user_config(dep.swarm.manifest, Path(data_dir) / "users" / subject, subject, org, attrs,
                                         request_timeout=request_timeout)
                    agent = await stack.enter_async_context(kind.open(config, node=dep.swarm.node))
                    await agent.register(dep.swarm.token(subject, org, attrs, agent.enroll_id))
                    dep.agents[subject] = agent
                verifier = TokenVerifier(issuer=dep.issuer.issuer, audience=dep.issuer.audience, jwks=dep.issuer.jwks())
                dep.facade = Facade(FacadeConfig(base_url="http://127.0.0.1"), dep.agents, verifier)
                nursery = await stack.enter_async_context(trio.open_nursery())
                binds = await nursery.start(dep.facade.serve, ["127.0.0.1:0"])
                dep.base = binds[0].rstrip("/") + "/"
                dep.facade.base_url = dep.base.rstrip("/")
                try:
                    yield dep
                finally:
                    nursery.cancel_scope.cancel()

        return opened()
