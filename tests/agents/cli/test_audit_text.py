"""The audit trail as text (``ledger audit``, ``patient audit``, the demo): an access the
ledger flagged ``late`` says so."""

from __future__ import annotations

import pytest

from agents.cli import demo, ledger, user

ACCESS = {"event": "access", "actor": "peer-b1", "time": 1767603601000, "height": 10, "grant_id": "g1",
          "request_id": "r1", "record_id": "rec-1", "doctor": "dr-h", "peer": "peer-b1", "share_index": 2,
          "entry": 0}


@pytest.mark.parametrize("text", [ledger.event_text, user.event_text, demo.describe_event])
def test_a_late_access_is_marked_and_others_are_not(text):
    plain = text(ACCESS)
    assert "re-encrypted" in plain and "rec-1" in plain and "logged after" not in plain
    for late in ("revoked", "expired"):
        assert f"[served before the grant was {late}, logged after" in text({**ACCESS, "late": late})
    assert "logged after" not in text({**ACCESS, "late": "bogus"})


def test_patient_serve_prints_a_line_per_answer(capsys):
    from agents.errors import RequestRejected

    user._print_answer("r-1", "dr-h", {"grant_id": "g-1", "height": 4})
    user._print_answer("r-2", "dr-gp", RequestRejected("the patient declined the request"))
    granted, refused = capsys.readouterr().out.splitlines()
    assert granted.endswith("Z  granted request r-1 of dr-h (grant g-1)")
    assert refused.endswith("Z  refused request r-2 of dr-gp: the patient declined the request")
