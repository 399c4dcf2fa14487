"""``emrshare bench heal``: how long storage takes to heal itself.

Launches a fresh swarm with one process per agent (``--processes``) in a
temporary directory, with the storage nodes' reconcile interval set by
``--interval``, registers a patient and then measures, with a record of
``--size-mib`` MiB of random bytes stored through the CLI
(``emrshare patient ... store``):

* **after the CLI exits**: one storage node is stalled (SIGSTOP) while the CLI
  stores, so the CLI gets its quorum (2 of 3) from the others, commits the
  ``store`` transaction and is SIGKILLed as soon as it prints that it stored the
  record; the node is resumed. Reported: seconds from the kill until every
  storage node's status file says it holds a verified copy (r copies).
* **after a node is wiped**: a storage node is SIGKILLed, its directory deleted
  and the process started again. Reported: seconds from the wipe until it holds
  a verified copy again (the restart included).

Both include up to one reconcile interval of waiting by design. Numbers are
printed (``--json``: as JSON); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

MiB = 1 << 20


async def _wait(predicate, timeout: float) -> float:
    t0 = time.monotonic()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
    return time.monotonic() - t0


async def measure(work: Path, size_mib: int, interval: float, *, timeout: float = 900.0) -> dict[str, Any]:
    """Run the scenario in ``work`` (a fresh directory); the seconds measured."""
    from agents.cli.storage import read_status
    from agents.swarm import Swarm, SwarmSpec

    data = work / "swarm"
    env = {**os.environ, "EMRSHARE_PASSPHRASE": "bench heal passphrase", "PYTHONUNBUFFERED": "1"}
    record = work / "record.bin"
    with open(record, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    common = ["--swarm", str(data), "--subject", "bench-patient"]
    cli = [sys.executable, "-m", "agents.cli"]
    spec = SwarmSpec(data_dir=data, processes=True, reconcile_interval=interval)
    with trio.fail_after(timeout):
        async with Swarm.open(spec, fresh=True) as swarm:
            stalled, wiped = swarm.manifest.storage[-1], swarm.manifest.storage[0]
            await trio.run_process([*cli, "patient", *common, "--org", "hospital-a", "register"], env=env,
                                   capture_stdout=True)
            swarm.stall(stalled)
            started = time.monotonic()
            proc = await trio.lowlevel.open_process(
                [*cli, "patient", *common, "store", str(record), "--label", "bench", "--record-id", "bench-1",
                 "--media-type", "application/octet-stream"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            out = b""
            while b"stored bench-1" not in out:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"the CLI did not store the record: {out.decode(errors='replace')}")
                out += chunk
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await proc.stdout.aclose()
            killed = time.monotonic()
            swarm.resume(stalled)
            after_exit = await _wait(lambda: bool(read_status(data).records) and read_status(data).complete,
                                     timeout)

            swarm.kill(wiped)
            shutil.rmtree(swarm.files.agent_dir(wiped))
            t0 = time.monotonic()
            await swarm.start_process(wiped)

            def refilled() -> bool:
                status = read_status(data)
                node = status.nodes.get(wiped)
                return node is not None and status.complete

            after_wipe = (time.monotonic() - t0) + await _wait(refilled, timeout)
    return {"size_mib": size_mib, "reconcile_interval_s": interval, "store_until_killed_s": killed - started,
            "r_copies_after_cli_exit_s": after_exit, "r_copies_after_wipe_s": after_wipe}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emrshare bench heal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=150, help="size of the record stored (default 150 MiB)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="storage nodes' reconcile interval in seconds (default 5)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if not args.interval > 0:
        parser.error("--interval must be more than 0 seconds")
    with tempfile.TemporaryDirectory(prefix="emrshare-heal-") as tmp:
        result = trio.run(measure, Path(tmp), args.size_mib, args.interval)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"record of {result['size_mib']} MiB, reconcile interval {result['reconcile_interval_s']:g} s")
        print(f"  store through the CLI until it was killed at quorum: {result['store_until_killed_s']:6.1f} s")
        print(f"  r copies after the CLI exited:                      {result['r_copies_after_cli_exit_s']:6.1f} s")
        print(f"  r copies after a storage node was wiped:            {result['r_copies_after_wipe_s']:6.1f} s")
    return 0
