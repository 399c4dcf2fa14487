"""Smoke test of ``emrshare bench pre``: structure, ratios and targets, not speed."""

from __future__ import annotations

import io
import json

import pytest

from agents.bench import pre as bench_pre

OURS_ONLY = {"standing parts 3-of-5", "derive share (peer, 1 doctor)", "G2 mul, secret scalar (CT)",
             "re-encrypt, derived share"}  # issue 16's rows: Umbral has no equivalent
ROW_OPS = [
    "encrypt",
    "rekey 1-of-1",
    "rekey 3-of-5",
    "standing parts 3-of-5",
    "derive share (peer, 1 doctor)",
    "G2 mul, secret scalar (CT)",
    "capsule decode (proxy)",
    "re-encrypt (1 share)",
    "re-encrypt, derived share",
    "share decode (doctor, 1 share)",
    "combine+decrypt, 1 share",
    "combine+decrypt, 3 shares",
    "owner decrypt (X25519 wrap)",
    "owner decrypt (pairing path)",
    "whole access, t=1",
    "whole access, t=3",
]
TARGETED = {
    "encrypt", "rekey 1-of-1", "rekey 3-of-5", "combine+decrypt, 1 share", "combine+decrypt, 3 shares",
    "owner decrypt (X25519 wrap)", "whole access, t=1", "whole access, t=3",
}


@pytest.fixture(scope="module")
def native():
    from core._backend import active_backend

    if active_backend().name != "native":
        pytest.skip("the benchmark runs pairings on the active backend; too slow on the pure one")
    return active_backend()


def _rows(result: dict, size_index: int = 0) -> dict[str, dict]:
    return {r["op"]: r for r in result["sizes"][size_index]["rows"]}


def test_report_with_umbral(native, tmp_path):
    pytest.importorskip("umbral_pre")
    path = tmp_path / "pre.json"
    out = io.StringIO()
    result = bench_pre.run(str(path), iterations=2, sizes=(1024, 5000), out=out)

    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert result["backend"] == "native" and result["machine"]["nproc"] >= 1
    assert result["umbral_pre"] == "0.11.0"
    assert [s["size"] for s in result["sizes"]] == [1024, 5000]
    for i in range(2):
        rows = _rows(result, i)
        assert [op for op in rows if not op.startswith("bare")] == ROW_OPS
        for op in ROW_OPS:
            r = rows[op]
            if op in OURS_ONLY:
                assert r["ours_us"] > 0 and r["umbral_us"] is None
                continue
            assert r["ours_us"] > 0 and r["umbral_us"] > 0
            assert r["ratio"] == pytest.approx(r["ours_us"] / r["umbral_us"])
            if op in TARGETED:
                assert r["target"] == "<= 1.00x umbral" and r["met"] == (r["ratio"] <= 1.0)
        bare = rows["bare mcl pairing (prepared G2)"]["ours_us"]
        re = rows["re-encrypt (1 share)"]
        assert bare > 0 and re["bare_ratio"] == pytest.approx(re["ours_us"] / bare)
        assert re["met"] == (re["bare_ratio"] <= bench_pre.REENCRYPT_BARE_TARGET)
        assert rows["bare mcl pairing (plain)"]["ours_us"] > 0
        derive, g2 = rows["derive share (peer, 1 doctor)"], rows["G2 mul, secret scalar (CT)"]["ours_us"]
        assert derive["bare_ratio"] == pytest.approx(derive["ours_us"] / g2)
        assert derive["met"] == (derive["bare_ratio"] <= bench_pre.DERIVE_G2_TARGET)
    evaluated = [r["met"] for s in result["sizes"] for r in s["rows"] if r["met"] is not None]
    assert result["all_targets_met"] == all(evaluated)

    text = out.getvalue()
    assert "backend native" in text and f"{result['machine']['nproc']} cpu" in text
    assert "umbral-pre 0.11.0" in text
    assert "message 1 KiB (1,024 bytes)" in text and "message 5000 B (5,000 bytes)" in text
    assert "ours/umbral" in text and "whole access, t=3" in text


def test_report_without_umbral(native, monkeypatch):
    monkeypatch.setattr(bench_pre, "_load_umbral", lambda: None)
    out = io.StringIO()
    result = bench_pre.run(None, iterations=1, sizes=(1024,), out=out)
    assert result["umbral_pre"] is None and result["all_targets_met"] is False
    rows = _rows(result)
    for op in ROW_OPS:
        assert rows[op]["ours_us"] > 0
        assert rows[op]["umbral_us"] is None and rows[op]["ratio"] is None
        if op in TARGETED:
            assert rows[op]["met"] is None
    # the re-encrypt target is against the bare pairing, so it is still evaluated
    assert rows["re-encrypt (1 share)"]["met"] is not None
    assert bench_pre.NOT_INSTALLED in out.getvalue()


def test_main_arguments(native, monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(bench_pre, "run", lambda path, n: calls.append((path, n)))
    assert bench_pre.main(["--quick"]) == 0
    assert bench_pre.main(["--iterations", "7", "--json", str(tmp_path / "x.json")]) == 0
    assert bench_pre.main([]) == 0
    assert calls == [(None, bench_pre.QUICK_ITERATIONS), (str(tmp_path / "x.json"), 7),
                     (None, bench_pre.DEFAULT_ITERATIONS)]
    for bad in (["--iterations", "0"], ["--quick", "--iterations", "3"]):
        with pytest.raises(SystemExit) as exc:
            bench_pre.main(bad)
        assert exc.value.code == 2


def test_cli_entry(native, monkeypatch):
    """The lead's CLI routes `emrshare bench pre` here."""
    from agents import cli

    seen = []
    monkeypatch.setattr(bench_pre, "run", lambda path, n: seen.append(n))
    assert cli.main(["bench", "pre", "--quick"]) == 0
    assert seen == [bench_pre.QUICK_ITERATIONS]
