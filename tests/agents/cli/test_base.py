"""The CLI's shared option readers (agents/cli/base.py)."""

import pytest

from agents.cli.base import UsageError, parse_attributes


def test_attributes_read_the_same_for_every_command():
    # the swarm's `doctor register` and a registrar's `registrar issue` both read --attr with it, so a
    # certificate's attributes (what policies compare) do not depend on the enrollment path
    got = parse_attributes(["department=cardiology", "on_call=true", "level=3", "badge=-2", "id=123456789012345678"],
                           "doctor register")
    assert got == {"department": "cardiology", "on_call": True, "level": 3, "badge": -2, "id": "123456789012345678"}
    with pytest.raises(UsageError):
        parse_attributes(["no-equals"], "registrar issue")
