"""One root for the errors agents raise, codes from core.protocol, typed rebuilding of remote codes."""

from __future__ import annotations

import pytest
import trio

import agents
import bus
import agents.storage
from agents.errors import (
    REMOTE_ERRORS,
    AgentError,
    EnrollmentExists,
    GrantRevoked,
    PolicyDenied,
    RegistrationError,
    SubmitTimeout,
    SubmitUnavailable,
    Unavailable,
    UnknownAgent,
    from_remote,
)
from agents.keys import KeyStoreError
from agents.ledger_store import StoreError
from agents.storage import BadRequest, CidMismatch, DiskFull, NotFound, StorageError, StorageUnavailable
from agents.consortium import ConsortiumDirectory
from agents.runtime import make_endpoint
from core import ecdsa
from core.protocol import codes
from core.protocol.codes import CODES


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_one_root_and_every_code_defined():
    for face in (agents, agents.storage):  # lazy faces: load every module whose errors we check
        for name in face._LAZY:
            getattr(face, name)
    for cls in (StorageError, KeyStoreError, StoreError):
        assert issubclass(cls, AgentError)
    for cls in {AgentError} | _subclasses(AgentError):
        assert cls.code in CODES, cls
    assert StoreError("x").code == "ledger-store" and KeyStoreError("x").code == "key-store"


def test_builtin_mixins_are_kept():
    assert isinstance(NotFound("gone"), KeyError) and str(NotFound("gone")) == "gone"
    assert isinstance(BadRequest("x"), ValueError) and isinstance(CidMismatch("x"), ValueError)
    assert isinstance(DiskFull("x"), OSError)


def test_one_unavailable():
    assert agents.storage.Unavailable is agents.Unavailable is Unavailable
    err = StorageUnavailable("0 of 2 replicas", {"s1": NotFound("x")})
    assert isinstance(err, StorageError) and isinstance(err, Unavailable)
    assert err.code == "storage.unavailable" and set(err.causes) == {"s1"}
    assert Unavailable("no peer").causes == {} and Unavailable("no peer").code == "unavailable"


def test_remote_codes_rebuild_typed_errors():
    assert type(from_remote("enroll.exists", "taken")) is EnrollmentExists
    assert type(from_remote("enroll.denied", "no")) is RegistrationError
    assert type(from_remote("request.denied", "policy")) is PolicyDenied
    assert type(from_remote("access.bad-state", "revoked")) is GrantRevoked
    assert type(from_remote("submit.timeout", "slow")) is SubmitTimeout
    assert type(from_remote("submit.unavailable", "no orderer")) is SubmitUnavailable
    unknown = from_remote("unknown-sender", "who?")
    assert type(unknown) is UnknownAgent and unknown.code == "agent.unknown"
    # a code about the sender's own state says nothing about us: a plain AgentError with that code
    for code in ("agent.unknown", "agent.cert-revoked", "unavailable", "tx.rejected", "forbidden", "new.code"):
        err = from_remote(code, "m")
        assert type(err) is AgentError and err.code == code and str(err) == "m"
    assert all(issubclass(cls, AgentError) for cls in REMOTE_ERRORS.codes().values())


async def test_a_raised_agent_error_crosses_the_bus_with_its_code():
    keys = {name: ecdsa.generate_private_key() for name in ("patient", "doctor")}
    directory = ConsortiumDirectory({name: ecdsa.public_key(k) for name, k in keys.items()})

    async def deny(msg):
        raise PolicyDenied("the policy says no", rule="r")

    with trio.fail_after(10):
        async with bus.open_node() as node:
            patient = make_endpoint(node, "patient", keys["patient"], directory)
            doctor = make_endpoint(node, "doctor", keys["doctor"], directory)
            patient.register("patient.access_request", deny)
            with pytest.raises(bus.RemoteError) as info:
                await doctor.request("patient", "patient.access_request", {"request_id": "r"})
            assert (info.value.code, info.value.message) == ("request.denied", "the policy says no")
            assert type(from_remote(info.value.code, info.value.message)) is PolicyDenied
            await patient.aclose()
            await doctor.aclose()


def test_a_class_names_its_code_in_its_header_checked_when_defined():
    class Refused(RegistrationError, code=codes.ENROLL_EXPIRED):
        pass

    class StillRefused(Refused):  # no code=: the base's
        pass

    assert Refused.code == StillRefused.code == "enroll.expired"
    assert RegistrationError.code == "enroll.denied"  # the base is untouched
    assert Refused("x", code="busy").code == "busy"  # an instance may still carry another
    with pytest.raises(ValueError, match="not a defined error code"):
        class Typo(AgentError, code="enroll.expird"):
            pass
