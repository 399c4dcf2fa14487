"""The registry of kinds: consistent with its types, with docs/protocol.md, and pure."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import core.protocol as protocol
from core.protocol import KINDS, TOPICS, Message, Sender
from core.protocol.codes import CODES

ROOT = pathlib.Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "protocol.md").read_text()


def _first_cells(section: str) -> list[str]:
    """The first cell of every table row in ``section`` (up to the next ``## `` heading)."""
    start = DOC.index(section)
    end = DOC.find("\n## ", start + 1)
    text = DOC[start:end if end != -1 else None]
    return [m.group(1).strip() for m in re.finditer(r"^\| ([^|]+) \|", text, re.M)]


def test_every_kind_and_topic_is_in_the_document_and_nothing_else():
    kinds, topics = set(), set()
    for section in ("## Orderer", "## Consortium peer", "## Patient agent", "## Storage nodes"):
        for cell in _first_cells(section):
            if cell in ("kind", "---"):
                continue
            topic = re.fullmatch(r"topic `([a-z_.]+)`", cell)
            if topic:
                topics.add(topic.group(1))
            else:
                kinds.add(re.fullmatch(r"`([a-z_.]+)`", cell).group(1))
    assert kinds == set(KINDS)
    assert topics == set(TOPICS)


def test_every_error_code_is_in_the_document_and_nothing_else():
    cells = [c for c in _first_cells("## Error codes") if c not in ("code", "---")]
    documented = [re.fullmatch(r"`([a-z.-]+)`", c).group(1) for c in cells]
    assert sorted(documented) == sorted(CODES)


def test_registry_entries_agree_with_their_types():
    for kind, spec in KINDS.items():
        assert spec.kind == kind == spec.request.kind == spec.reply.kind
        assert issubclass(spec.request, Message) and issubclass(spec.reply, Message)
        assert spec.server == kind.split(".")[0]
        assert spec.senders and spec.senders <= set(Sender)
    for topic, t in TOPICS.items():
        assert t.topic == topic == t.payload.kind and t.subscribers
    assert KINDS["orderer.submit"].senders == {Sender.PEER, Sender.ORDERER}  # etcd nodes forward to their leader
    assert KINDS["peer.enroll"].senders == {Sender.ENROLLING}


def test_every_exported_message_type_is_in_the_registry_or_part_of_one():
    exported = {v for v in vars(protocol).values() if isinstance(v, type) and issubclass(v, Message)}
    registered = {t for s in KINDS.values() for t in (s.request, s.reply)} | {t.payload for t in TOPICS.values()}
    parts = {protocol.SubmitResult, protocol.Decision, protocol.BlobStatistics, protocol.NodeStatistics,
             protocol.BlockRange, protocol.BlockList}
    assert exported - registered - {Message} == parts


def test_core_protocol_imports_no_trio_bus_or_agents():
    code = ("import sys, core.protocol\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'bus', 'agents'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_allowed_senders_table_is_the_registry():
    order = [c.value for c in Sender]
    rows = {}
    start = DOC.index("## Allowed senders")
    text = DOC[start:DOC.find("\n## ", start + 1)]
    for m in re.finditer(r"^\| (`[a-z_.]+`|topic `[a-z_.]+`) \| ([a-z, ]+) \|", text, re.M):
        rows[m.group(1).replace("`", "")] = [c.strip() for c in m.group(2).split(",")]
    expected = {k: [c for c in order if Sender(c) in s.senders] for k, s in KINDS.items()}
    expected.update({f"topic {t}": [c for c in order if Sender(c) in s.subscribers] for t, s in TOPICS.items()})
    assert rows == expected


def test_the_narrowed_columns():
    assert Sender.ENROLLING not in KINDS["peer.submit"].senders
    assert KINDS["peer.blocks"].senders == KINDS["orderer.blocks"].senders == {Sender.PEER, Sender.STORAGE}
    assert KINDS["storage.list"].senders.isdisjoint({Sender.ENROLLING, Sender.PATIENT, Sender.DOCTOR, Sender.USER})
    assert TOPICS["events"].subscribers == {Sender.PEER}
    assert not any(Sender.ENROLLING in s.senders for k, s in KINDS.items() if k not in ("peer.enroll", "peer.query"))


# The codes as they were given (append-only): a kind keeps its code for ever; a removed
# kind's code moves to RETIRED_KIND_CODES. Add a new kind's code here, never change one.
_GIVEN_CODES = {
    "orderer.submit": 1, "orderer.blocks": 2, "orderer.head": 3, "peer.enroll": 4, "peer.submit": 5,
    "peer.query": 6, "peer.audit": 7, "peer.deliver_share": 8, "peer.reencrypt": 9, "peer.blocks": 10,
    "patient.access_request": 11, "storage.put": 12, "storage.put.begin": 13, "storage.put.chunk": 14,
    "storage.put.commit": 15, "storage.put.abort": 16, "storage.get": 17, "storage.leaves": 18,
    "storage.has": 19, "storage.pin": 20, "storage.unpin": 21, "storage.stat": 22, "storage.list": 23,
}


def test_kind_codes_are_append_only_and_unique():
    from core.protocol import KIND_CODES, RETIRED_KIND_CODES

    for kind, code in _GIVEN_CODES.items():
        if kind in KINDS:
            assert KIND_CODES[kind] == code == KINDS[kind].code, f"{kind!r} was renumbered"
        else:
            assert code in RETIRED_KIND_CODES, f"{kind!r} was removed without retiring its code"
    assert set(KIND_CODES) == set(KINDS) and set(_GIVEN_CODES) >= set(KINDS), "a new kind's code goes in _GIVEN_CODES"
    codes = list(KIND_CODES.values())
    assert len(codes) == len(set(codes)) and not set(codes) & RETIRED_KIND_CODES
    assert all(0 < c <= 2**16 - 1 for c in codes)


def test_the_kind_codes_are_in_the_document():
    from core.protocol import KIND_CODES, TOPIC_CODES

    start = DOC.index("**Kind codes**")
    text = DOC[start:DOC.index("\n\n", start)]
    listed = {m.group(1): int(m.group(2)) for m in re.finditer(r"`([a-z_./]+)` (\d+)", text)}
    assert listed == {**KIND_CODES, **TOPIC_CODES}
