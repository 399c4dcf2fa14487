"""agents.bench._output: the benchmarks' shared parser and ``--json`` writer."""

from __future__ import annotations

import json

from agents.bench._output import bench_parser, write_json


def test_bench_parser_names_the_command_and_takes_json():
    parser = bench_parser("bus", "``emrshare bench bus``: round trips.\n\nMore text.\n")
    assert parser.prog == "emrshare bench bus"
    assert parser.description == "``emrshare bench bus``: round trips."
    assert parser.parse_args([]).json is None
    assert parser.parse_args(["--json", "out.json"]).json == "out.json"


def test_write_json_to_a_file_leaves_the_table_to_the_caller(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert write_json(str(path), {"a": [1, 2]}) is False
    assert path.read_text().endswith("\n") and json.loads(path.read_text()) == {"a": [1, 2]}
    assert capsys.readouterr().out == ""


def test_write_json_dash_prints_only_the_json(capsys):
    assert write_json("-", {"b": 3}) is True
    assert json.loads(capsys.readouterr().out) == {"b": 3}


def test_write_json_without_a_path_writes_nothing(tmp_path, capsys):
    assert write_json(None, {"c": 1}) is False
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []
