"""``emrshare bench fhir``: the FHIR facade's overhead, ``$everything`` over HTTP vs the Python API.

In one run, on a fresh embedded swarm (4 peers, t=2, 3 storage nodes) with the
facade on loopback HTTP (:class:`agents.testing.smart.FhirDeployment`): the
patient stores a Synthea transaction Bundle (``../shared/data/fhir-r4``, or a
generated one) and sets a Consent letting cardiologists read everything; a
warm-up ``$everything`` lets the cardiologist obtain its grants. Then, in
alternating rounds:

* **HTTP**: ``GET /Patient/alice/$everything`` with a bearer token, through
  ``requests`` (in a worker thread), response parsed as JSON;
* **Python API**: the same read as an embedding integrator writes it: the
  doctor's ``records(patient)``, each FHIR record read with
  ``DoctorAgent.read`` (the same parallelism: :func:`agents.fhir.app.read_records`)
  and parsed as JSON.

Both read, verify and decrypt every record (each read asks t peers to
re-encrypt: ledger ``access`` transactions); the difference is the facade
(token check, HTTP, the searchset Bundle's JSON both ways). Reported: the
median and minimum of each, and the ratio of the medians (target: at most
1.5x; reported, never asserted). ``--json FILE`` also writes the results.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from agents.bench._output import bench_parser, write_json

TARGET_RATIO = 1.5
_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir-r4" / "synthea-smart-r4"


def _bundle(path: Path | None) -> tuple[dict, str]:
    if path is None:
        found = sorted(_DATA.glob("*.json"))
        if found:
            path = found[0]
    if path is not None:
        return json.loads(Path(path).read_text()), Path(path).name
    from agents.testing.fhir import generate_bundle

    return generate_bundle(1, 200), "generated (seed 1, 200 KiB)"


async def _run(tmp: Path, bundle: dict, rounds: int) -> dict[str, Any]:
    import requests

    from agents.fhir import LabelMap, plan_transaction
    from agents.fhir.app import read_records, store_entries
    from agents.fhir.consent import consent_to_policy
    from agents.testing.smart import CARDIOLOGY_CONSENT, FhirDeployment

    async with FhirDeployment.open(tmp, request_timeout=30.0) as dep:
        alice, heart = dep.agents["alice"], dep.agents["dr-heart"]
        entries = plan_transaction(bundle, LabelMap.default_map(), max_entries=10_000)
        await store_entries(alice, entries)
        await alice.set_policy(consent_to_policy(CARDIOLOGY_CONSENT, labels=LabelMap.default_map(),
                                                 patient="alice").to_text())
        token = dep.issuer.token("dr-heart", "user/*.rs", patient="alice")
        url = dep.base + "Patient/alice/$everything"
        session = requests.Session()

        def http_once() -> int:
            r = session.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
                            timeout=120)
            r.raise_for_status()
            return len(r.json()["entry"])

        async def api_once() -> int:
            recs = [r for r in await heart.records("alice")
                    if str(r.get("media_type", "")).startswith("application/fhir+json")]
            plain, denials = await read_records(heart, "alice", recs, None, parallel=dep.facade.config.parallel)
            assert not denials
            return len([json.loads(v) for v in plain.values()])

        assert await trio.to_thread.run_sync(http_once) == len(entries)  # warm-up: grants, connections
        assert await api_once() == len(entries)
        http, api = [], []
        for i in range(rounds):
            for kind in (("http", "api") if i % 2 == 0 else ("api", "http")):
                t = time.perf_counter()
                n = await trio.to_thread.run_sync(http_once) if kind == "http" else await api_once()
                (http if kind == "http" else api).append(time.perf_counter() - t)
                assert n == len(entries)
        session.close()
    ratio = statistics.median(http) / statistics.median(api)
    return {"resources": len(entries), "bundle_bytes": len(json.dumps(bundle)), "rounds": rounds,
            "http_s": http, "api_s": api, "http_median_s": statistics.median(http),
            "api_median_s": statistics.median(api), "http_min_s": min(http), "api_min_s": min(api),
            "ratio_median": ratio, "target": {"max_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO}}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("fhir", __doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each (default 5)")
    parser.add_argument("--bundle", type=Path, help="a transaction Bundle to store (default: the first Synthea one)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    import logging

    logging.getLogger("bus").setLevel(logging.ERROR)  # the start-up's certificate look-ups are expected
    bundle, name = _bundle(args.bundle)
    with tempfile.TemporaryDirectory(prefix="emrshare-bench-fhir-") as tmp:
        result = trio.run(_run, Path(tmp), bundle, args.rounds)
    result["bundle"] = name
    if write_json(args.json, result):
        return 0
    print(f"fhir: $everything of {result['resources']} resources ({name}), {args.rounds} rounds each, "
          f"doctor with cached grants, every record re-encrypted (t=2) and decrypted")
    print(f"{'path':<34} {'median ms':>10} {'min ms':>8}")
    print(f"{'HTTP GET /Patient/alice/$everything':<34} {result['http_median_s'] * 1e3:>10.1f} "
          f"{result['http_min_s'] * 1e3:>8.1f}")
    print(f"{'Python API records() + read()':<34} {result['api_median_s'] * 1e3:>10.1f} "
          f"{result['api_min_s'] * 1e3:>8.1f}")
    t = result["target"]
    print(f"overhead: {result['ratio_median']:.2f}x (target <= {t['max_ratio']}x) -> {'met' if t['met'] else 'NOT met'}")
    sys.stdout.flush()
    return 0
