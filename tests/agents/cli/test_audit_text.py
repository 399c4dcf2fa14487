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
        assert f"[logged after the grant {'was revoked' if late == 'revoked' else 'expired'}: served " in text(
            {**ACCESS, "late": late})
    assert "logged after" not in text({**ACCESS, "late": "bogus"})


def test_patient_serve_prints_a_line_per_answer(capsys, monkeypatch):
    from agents.errors import PolicyDenied, RequestRejected, Unavailable, UnknownRequest

    printer = user._AnswerPrinter()
    printer("r-1", "dr-h", {"grant_id": "g-1", "height": 4})
    printer("r-2", "dr-gp", RequestRejected("the patient declined the request"))
    printer("r-3", "dr-gp", PolicyDenied("the policy denies this request: no rule"))
    printer("r-4", "dr-x", UnknownRequest("no request r-4 from dr-x"))  # (any doctor can send these: no line)
    printer("r-5", "dr-h", Unavailable("2 of 4 peers took their shares"))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        "granted request r-1 of dr-h (grant g-1)",
        "refused request r-2 of dr-gp: the patient declined the request",
        "refused request r-3 of dr-gp: the policy denies this request: no rule",
        "could not answer request r-5 of dr-h: 2 of 4 peers took their shares"]
    assert all(line[:20].endswith("Z") for line in lines)

    def closed_pipe(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("builtins.print", closed_pipe)
    printer("r-6", "dr-h", {"grant_id": "g-6"})  # a closed pipe: no exception, and no more tries
    assert printer.closed
