"""agents._entry: the command line the agent processes share (``python -m agents.peer``,
``python -m agents.storage``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents._entry import agent_parser, serve_command


def test_serve_takes_the_common_options():
    parser, commands = agent_parser("python -m agents.x")
    serve = serve_command(commands, "run x", key_file="x's key")
    serve.add_argument("--data", type=Path, required=True, help="x's data")
    args = parser.parse_args(["serve", "--id", "x1", "--key-file", "k.key", "--data", "d"])
    assert (args.command, args.id, args.key_file, args.data) == ("serve", "x1", Path("k.key"), Path("d"))
    assert args.listen == "tcp://127.0.0.1:0"


def test_a_subcommand_is_required(capsys):
    parser, commands = agent_parser("python -m agents.x")
    serve_command(commands, "run x", key_file="x's key")
    with pytest.raises(SystemExit) as e:
        parser.parse_args([])
    assert e.value.code == 2


@pytest.mark.parametrize("module, own", [("agents.peer.__main__", "--no-enroll"),
                                         ("agents.storage.__main__", "--sessions-per-sender")])
def test_agent_processes_serve_with_the_common_options(module, own, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--id", "--key-file", "--listen", own):
        assert option in out
    assert "the agent's id on the bus" in out
