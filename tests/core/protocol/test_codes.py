"""core.protocol.codes: one style, the bus's codes mirrored, ledger reasons relayed in one place,
and the registry that rebuilds typed exceptions."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

import bus
from core.ledger import REASON_CODES, Ledger
from core.protocol import codes
from core.protocol.codes import CODES, ErrorRegistry, access_code, check_code

STYLE = re.compile(r"^([a-z][a-z0-9]*(-[a-z0-9]+)*\.)?[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def test_every_code_is_in_the_house_style_and_defined_once():
    assert all(STYLE.match(code) for code in CODES)
    constants = [v for k, v in vars(codes).items() if k.isupper() and isinstance(v, str)]
    assert sorted(set(constants)) == sorted(constants)  # no two constants share a code
    assert set(constants) <= set(CODES)
    assert set(CODES) == set(constants) | set(codes.ACCESS_CODES.values())
    for bad in ("cert_revoked", "access.bad_state", "Enroll.denied", "a..b", "-x", "x-"):
        assert not STYLE.match(bad)


def test_the_bus_codes_are_the_bus_s_own():
    source = "".join(p.read_text() for p in pathlib.Path(bus.__file__).parent.glob("*.py"))
    sent_by_bus = {a or b for a, b in re.findall(r'"code": "([a-z-]+)"|HandlerError\(\s*"([a-z-]+)"', source)}
    assert sent_by_bus  # the scan found the literals
    ours = {c.code for c in CODES.values() if c.origin == "bus"} | {codes.BAD_REQUEST}
    assert set(bus.REJECT_REASONS) | sent_by_bus == ours


def test_ledger_reasons_are_relayed_as_access_codes():
    assert access_code("bad_state") == codes.ACCESS_BAD_STATE == "access.bad-state"
    assert access_code("cert_revoked") == "access.cert-revoked"
    for reason in codes.REENCRYPTION_REASONS:
        assert reason in REASON_CODES
        assert check_code(access_code(reason)) == codes.ACCESS_CODES[reason]
    for bad in ("ok", "bad-state", "made_up", "duplicate"):
        with pytest.raises(ValueError):
            access_code(bad)


def test_every_reason_check_reencryption_raises_has_an_access_code():
    raised = set(re.findall(r'ValidationError\("([a-z_]+)"', inspect.getsource(Ledger.check_reencryption)))
    assert raised == set(codes.REENCRYPTION_REASONS)


class Root(Exception):
    code = "agent.error"

    def __init__(self, message: str = "", *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class Denied(Root):
    code = codes.REQUEST_DENIED


class Unknown(Root):
    code = codes.AGENT_UNKNOWN


def test_registry_rebuilds_typed_errors_and_defaults_to_the_root():
    registry = ErrorRegistry(lambda code, message: Root(message, code=code))
    registry.register(Denied)
    registry.register(Unknown, codes=(codes.UNKNOWN_SENDER,))
    err = registry.rebuild("request.denied", "no")
    assert type(err) is Denied and str(err) == "no" and err.code == "request.denied"
    assert type(registry.rebuild("unknown-sender", "who")) is Unknown  # a translated code
    assert registry.rebuild("unknown-sender", "who").code == "agent.unknown"
    other = registry.rebuild("storage.corrupt", "bad bytes")
    assert type(other) is Root and other.code == "storage.corrupt"
    unknown = registry.rebuild("from.the-future", "?")  # a code this version does not define
    assert type(unknown) is Root and unknown.code == "from.the-future"
    assert registry.type_for("request.denied") is Denied and registry.type_for("x") is None
    with pytest.raises(ValueError, match="already mapped"):
        registry.register(Denied)
    with pytest.raises(ValueError, match="not a defined error code"):
        registry.register(Root, codes=("made.up",))
