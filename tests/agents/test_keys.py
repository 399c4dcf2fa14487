"""agents.keys.read_passphrase_file: the one reading of a passphrase file (org commands,
node configurations, `node config --passphrase-file`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from agents.keys import KeyStoreError, read_passphrase_file
from agents.org import OrgError, Unlock

# (a lone "\r" inside reads as "\n": Python's universal newlines, as before this helper)
passphrases = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), min_size=1).filter(
    lambda s: not s.endswith("\n"))


@settings(max_examples=60, deadline=None)
@given(passphrases, st.sampled_from(["", "\n", "\r\n", "\n\n"]))
def test_the_line_ending_goes_everything_else_counts(passphrase, ending):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pass"
        path.write_bytes((passphrase + ending).encode())
        assert read_passphrase_file(path) == passphrase
        assert Unlock.from_files(path, None).passphrase == passphrase  # the org commands read it the same


@pytest.mark.parametrize("content, needle", [(b"", "is empty; write the passphrase in it"),
                                             (b"\r\n", "is empty"), (b"\xff\xfe", "not text; check the path")])
def test_unusable_files_are_refused_with_what_to_do(tmp_path, content, needle):
    path = tmp_path / "pass"
    path.write_bytes(content)
    with pytest.raises(KeyStoreError, match=needle):
        read_passphrase_file(path)
    with pytest.raises(OrgError, match=needle):
        Unlock.from_files(path, None)


def test_a_missing_file(tmp_path):
    with pytest.raises(KeyStoreError, match=r"passphrase file .*absent: no such file or directory; check the path"):
        read_passphrase_file(tmp_path / "absent")
