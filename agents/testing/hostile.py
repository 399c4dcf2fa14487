"""A hostile-client kit: every kind and topic, sent by senders who may not send it.

For every kind in :data:`core.protocol.KINDS` and every topic in
:data:`core.protocol.TOPICS` (enumerated from the registry, so a new kind is
covered by construction: a kind without a well-formed body here fails the
kit), :func:`run` sends a well-formed request on a running swarm from

* ``enrolling``: a fresh ``enroll:<key>`` id (unless the kind admits it);
* ``wrong-role``: a registered user whose class the kind does not admit
  (a patient for doctors' kinds, a doctor for patients' kinds, either for the
  consortium's kinds);
* ``other-data``: a registered user of an admitted class asking about someone
  else's data (another patient's grant, record, policy, audit; another
  doctor's request or grant; a put session it did not begin; a transaction
  it did not sign as submitter; another user's commit notices,
  ``commits/<victim>``),

and records whether the answer was a typed refusal. :class:`Cast` is who
plays: the victims (a patient with a record, a policy and a grant to its
doctor) and the attackers, all registered on the swarm by the caller.

For tests of one server's admission alone: :func:`endpoints` (named endpoints
with fresh keys, on one node or reaching the server over loopback TCP) and
:func:`refusal_code` (the code of a refusal, None when answered).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable

import bus
from agents.consortium import ConsortiumDirectory
from agents.runtime import make_endpoint
from core import ecdsa
from core.enrollment import TOKEN_SIZE
from core.protocol import KINDS, TOPICS, Sender
from core.tx import Transaction

__all__ = ["Cast", "Outcome", "Report", "bodies", "run", "REFUSALS", "endpoints", "refusal_code"]

REFUSALS = frozenset({"unknown-sender", "forbidden", "audit.forbidden", "share.forbidden", "access.forbidden",
                      "request.unknown", "storage.forbidden", "storage.bad-request", "enroll.denied", "busy"})
"""The typed codes that count as a refusal (``unknown-sender``: the bus's own, e.g. the orderer,
which knows no users at all)."""


@dataclass
class Cast:
    """Who plays. Endpoints are bus endpoints of registered (or enrolling) agents."""

    anonymous: bus.Endpoint  # enroll:<key>
    patient: bus.Endpoint  # the attacker patient (mallory)
    patient_key: bytes  # its ECDSA private key
    doctor: bus.Endpoint  # the attacker doctor (not allowed by the victim's policy)
    victim: str  # the victim patient's id (its agent serves patient.access_request)
    victim_doctor: str
    record_id: str
    cid: str
    grant_id: str
    request_id: str
    peer: str
    orderer: str
    storage: str


@dataclass(frozen=True)
class Outcome:
    kind: str
    sender: str  # "enrolling", "wrong-role", "other-data"
    code: str | None  # the error code, None when it was answered


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return len(self.outcomes)

    @property
    def refused(self) -> int:
        return sum(1 for o in self.outcomes if o.code in REFUSALS)

    @property
    def wrongly_allowed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.code not in REFUSALS]

    def summary(self) -> str:
        kinds = len({o.kind for o in self.outcomes})
        return (f"hostile kit: {kinds} kinds and topics x sender classes: {self.tried} tried, {self.refused} "
                f"refused, {len(self.wrongly_allowed)} wrongly allowed")


def bodies(cast: Cast) -> dict[str, Any]:
    """A well-formed body for every kind (about the victim's data where there is data)."""
    return {
        "orderer.submit": {"tx": _tx(cast, "alice-x")},
        "orderer.blocks": {"from": 0, "limit": 10},
        "orderer.head": {},
        "peer.enroll": {"subject": "eve", "org": "hospital-a", "attributes": {"role": "patient"},
                        "box_key": bytes(32), "pre_key": bytes(144), "pre_proof": bytes(64), "valid_s": 86400,
                        "token": bytes(TOKEN_SIZE)},  # well-formed, not issued by the registrar
        "peer.submit": {"tx": _tx(cast, cast.victim), "wait": True},
        "peer.query": {"what": "policy", "patient": cast.victim},
        "peer.audit": {"patient": cast.victim},
        "peer.deliver_share": {"grant_id": cast.grant_id, "index": 1, "sealed": bytes(100)},
        "peer.reencrypt": {"grant_id": cast.grant_id, "patient": cast.victim, "record_id": cast.record_id,
                           "request_id": cast.request_id},
        "peer.blocks": {"from": 0, "limit": 10},
        "patient.access_request": {"request_id": cast.request_id},
        "storage.put": {"cid": None, "data": b"junk", "pin": True},
        "storage.put.begin": {"cid": None, "size": 4, "pin": True},
        "storage.put.chunk": {"session": secrets.token_bytes(16), "offset": 0, "data": b"junk"},
        "storage.put.commit": {"session": secrets.token_bytes(16)},
        "storage.put.abort": {"session": secrets.token_bytes(16)},
        "storage.get": {"cid": cast.cid, "offset": 0, "length": 16},
        "storage.leaves": {"cid": cast.cid},
        "storage.has": {"cid": cast.cid},
        "storage.pin": {"cid": cast.cid},
        "storage.unpin": {"cid": cast.cid},
        "storage.stat": {"cid": None},
        "storage.list": {"after": None, "limit": 10},
    }


def _tx(cast: Cast, submitter: str) -> bytes:
    """A store-like transaction naming ``submitter``, signed with the attacker patient's key."""
    return Transaction.create("set_policy", submitter, {"policy": b"x"}, cast.patient_key,
                              int(time.time() * 1000)).to_bytes()


def _target(cast: Cast, server: str) -> str:
    return {"peer": cast.peer, "orderer": cast.orderer, "storage": cast.storage, "patient": cast.victim}[server]


async def refusal_code(ep: bus.Endpoint, to: str, kind: str, body: Any, *, timeout: float = 15.0) -> str | None:
    """The code of ``to``'s error reply to this request from ``ep``; None when it answered."""
    try:
        await ep.request(to, kind, body, timeout=timeout)
    except bus.RemoteError as exc:
        return exc.code
    return None


@contextlib.asynccontextmanager
async def endpoints(names: Iterable[str], *, server: str = "server", tcp: bool = False
                    ) -> AsyncIterator[dict[str, bus.Endpoint]]:
    """An endpoint for each of ``names`` (fresh keys, one directory that knows them all):
    ``server`` on a node of its own, the others on a second node reaching it over loopback
    TCP (``tcp``) or all on one node (no crypto between them)."""
    names = tuple(names)
    keys = {name: ecdsa.generate_private_key() for name in names}
    directory = ConsortiumDirectory({name: ecdsa.public_key(k) for name, k in keys.items()})
    async with bus.open_node() as server_node, bus.open_node() as client_node:
        node = client_node if tcp else server_node
        if tcp:
            client_node.add_route(server, await server_node.listen("tcp://127.0.0.1:0"))
        eps = {name: make_endpoint(server_node if name == server else node, name, keys[name], directory)
               for name in names}
        try:
            yield eps
        finally:
            for ep in eps.values():
                await ep.aclose()


async def _subscribe(ep: bus.Endpoint, to: str, topic: str) -> str | None:
    try:
        sub = await ep.subscribe(to, topic, timeout=15)
    except bus.RemoteError as exc:
        return exc.code
    await sub.aclose()
    return None


async def run(cast: Cast, *, progress: Callable[[Outcome], None] | None = None) -> Report:
    """Send every kind and topic from every hostile sender class (see the module docstring)."""
    report = Report()
    body_of = bodies(cast)
    users = {Sender.PATIENT: cast.patient, Sender.DOCTOR: cast.doctor}

    def note(kind: str, sender: str, code: str | None) -> None:
        outcome = Outcome(kind, sender, code)
        report.outcomes.append(outcome)
        if progress is not None:
            progress(outcome)

    for kind, spec in KINDS.items():
        body = body_of[kind]  # KeyError: a new kind needs a body here
        to = _target(cast, spec.server)
        if Sender.ENROLLING not in spec.senders or kind == "peer.enroll":
            # peer.enroll admits enrolling ids: its anonymous case is a well-formed body without a valid token
            note(kind, "enrolling", await refusal_code(cast.anonymous, to, kind, body))
        wrong = [ep for cls, ep in users.items() if cls not in spec.senders]
        if wrong:
            note(kind, "wrong-role", await refusal_code(wrong[0], to, kind, body))
        right = [ep for cls, ep in users.items() if cls in spec.senders]
        if right and _has_object(kind):
            note(kind, "other-data", await refusal_code(right[0], to, kind, body))
    for topic, tspec in TOPICS.items():
        to = cast.orderer if tspec.publisher == "orderer" else cast.peer
        note(f"topic {topic}", "enrolling", await _subscribe(cast.anonymous, to, topic))
        note(f"topic {topic}", "wrong-role", await _subscribe(cast.patient, to, topic))
        note(f"topic {topic}", "wrong-role", await _subscribe(cast.doctor, to, topic))
        if tspec.per_subject:  # a user's own notices: another user's are refused
            note(f"topic {topic}", "other-data", await _subscribe(cast.patient, to, f"{topic}/{cast.victim}"))
            note(f"topic {topic}", "other-data",
                 await _subscribe(cast.doctor, to, f"{topic}/{cast.victim_doctor}"))
    return report


def _has_object(kind: str) -> bool:
    """Kinds about someone's data (the other-data column applies)."""
    return kind in {"peer.submit", "peer.query", "peer.audit", "peer.deliver_share", "peer.reencrypt",
                    "patient.access_request", "storage.put.chunk", "storage.put.commit", "storage.put.abort",
                    "storage.pin", "storage.unpin"}
