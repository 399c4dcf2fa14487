"""The commands the docs tell a person to type exist: every `emrshare ...` line in a code block
of README.md and docs/*.md names registered commands and subcommands, and every `--option` on it
is one that command's own help (or its group's, for patient/doctor) lists.

A newcomer follows docs/deploy.md to the letter; a renamed option or a subcommand that moved
fails here instead of on their machine. Only names are checked (option values are not run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.cli import _COMMANDS, main

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GROUPS = {path[0] for path in _COMMANDS}
SUBCOMMANDS = {g: {p[1] for p in _COMMANDS if p[0] == g and len(p) > 1} for g in GROUPS}
USER_SUBCOMMANDS = {"patient": {"register", "store", "read", "policy", "revoke", "rotate", "away", "records",
                                "grants", "audit", "serve"},
                    "doctor": {"register", "records", "request", "read", "cosign", "break-glass"}}
OPTION = re.compile(r"--[a-z][a-z0-9-]*")


def command_lines(text: str) -> list[str]:
    """The `emrshare ...` commands of the markdown's code blocks (indented or fenced), with
    continuation lines joined and comments dropped."""
    out: list[str] = []
    lines = text.splitlines()
    fenced = False
    i = 0
    while i < len(lines):
        raw = lines[i]
        line = raw.strip()
        i += 1
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or raw.startswith("    ")):
            continue  # prose
        start = line.find("emrshare ")
        if not (line.startswith(("emrshare ", "$ emrshare ")) or start > 0 and line[start - 1] == "/"):
            continue  # not a command; `.venv/bin/emrshare` and ExecStart=/opt/.../emrshare are
        line = line[start:]
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        out.append(line.split(" #")[0].split("`")[0].strip())
    return out


def _help(capsys, argv: list[str]) -> str:
    try:
        code = main([*argv, "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0, argv
    return capsys.readouterr().out


def check(line: str, capsys, helps: dict) -> list[str]:
    """What is wrong with one documented command line (empty: nothing)."""
    words = [w.strip("[](){}") for w in line.split()[1:]]
    if not words or words[0].startswith("-"):
        return []
    problems = []
    groups = words[0].split("|")
    for group in groups:
        if group not in GROUPS:
            return [f"{line}: no command {group!r}"]
    for group in groups:
        subs = SUBCOMMANDS[group] or USER_SUBCOMMANDS.get(group, set())
        named = [w for w in words[1:] if not w.startswith("-") and all(p in subs for p in w.split("|"))]
        alternatives = [p for w in named for p in w.split("|")]
        if subs and not named and group not in USER_SUBCOMMANDS:
            problems.append(f"{line}: {group} without one of its subcommands {sorted(subs)}")
        paths = [[group, s] for s in alternatives] or [[group]]
        for path in paths:
            key = tuple(path)
            if key not in helps:
                helps[key] = _help(capsys, path) + (_help(capsys, [group]) if group in USER_SUBCOMMANDS else "")
        if len(alternatives) > 1:
            continue  # `a|b|c` lists subcommands; their options are not on the line
        for word in words[1:]:
            for option in OPTION.findall(word):
                if option in ("--help", "--version", "--verbose"):
                    continue
                if not any(re.search(re.escape(option) + r"(?![a-z0-9-])", helps[tuple(p)]) for p in paths):
                    problems.append(f"{line}: {' '.join(paths[0])} has no option {option}")
    return problems


def test_the_command_lines_are_found():
    text = (ROOT / "docs" / "deploy.md").read_text()
    lines = command_lines(text)
    assert any(line.startswith("emrshare org init --org h1 ") and "--passphrase-file" in line for line in lines)
    assert "emrshare node start --config /etc/emrshare/peer.toml" in lines  # systemd's ExecStart=
    assert "emrshare demo" in command_lines((ROOT / "README.md").read_text())  # .venv/bin/emrshare demo
    assert len(lines) > 30


def test_check_finds_a_wrong_option_and_a_wrong_subcommand(capsys):
    helps: dict = {}
    assert check("emrshare org init --org h1 --dir D --key-file K", capsys, helps) == []
    assert check("emrshare org init --org h1 --peer 2", capsys, helps) == [
        "emrshare org init --org h1 --peer 2: org init has no option --peer"]
    assert check("emrshare consortium genesis|sign|seal", capsys, helps) == []
    assert "no command 'orgs'" in check("emrshare orgs init", capsys, helps)[0]
    assert check("emrshare consortium --out x", capsys, helps)  # a group without its subcommand
    assert check("emrshare patient --dir D --key-file F store x --label l", capsys, helps) == []
    assert check("emrshare doctor --dir D read alice r --outt f", capsys, helps)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_documented_command_and_option_exists(doc, capsys):
    helps: dict = {}
    problems = [p for line in command_lines(doc.read_text()) for p in check(line, capsys, helps)]
    assert problems == []
