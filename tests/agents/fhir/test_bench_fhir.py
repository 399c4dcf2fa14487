"""``emrshare bench fhir`` runs end to end and reports both paths (numbers printed, never asserted)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("hypercorn")
pytestmark = pytest.mark.slow


def test_bench_fhir_reports_both_paths(tmp_path, capsys):
    from agents.bench.fhir import main
    from agents.testing.fhir import generate_bundle

    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps(generate_bundle(3, 6)))
    assert main(["--rounds", "1", "--bundle", str(bundle), "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["resources"] == len(json.loads(bundle.read_text())["entry"])
    assert len(out["http_s"]) == len(out["api_s"]) == 1
    assert out["ratio_median"] > 0 and set(out["target"]) == {"max_ratio", "met"}
