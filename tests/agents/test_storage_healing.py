"""Storage that heals itself, end to end: one process per agent on loopback TCP, the CLI as a process.

A large record stored through ``emrshare patient ... store`` while one storage
node is stalled, the CLI SIGKILLed as soon as the store committed with 2 of 3
copies: the stalled node, resumed, gets its copy from the reconcile loop and its
abandoned partial upload expires; a storage node wiped and restarted is
refilled; the blob of a refused store is collected after the grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from agents.cli.storage import read_status
from agents.storage import BlobStore
from agents.swarm import Swarm, SwarmSpec

pytestmark = pytest.mark.slow

MiB = 1 << 20
ENV = {**os.environ, "EMRSHARE_PASSPHRASE": "healing test passphrase", "PYTHONUNBUFFERED": "1"}


async def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = await trio.run_process([sys.executable, "-m", "agents.cli", *args], capture_stdout=True,
                                  capture_stderr=True, env=ENV, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} -> {proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}")
    return proc


def blob_files(node_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in (node_dir / "blobs").glob("*/*") if p.suffix not in (".pin", ".owner")}


def verify_copy(path: Path, scratch: Path) -> bool:
    """Re-hash a copy outside the live node (a BlobStore over a scratch directory)."""
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "blobs" / path.parent.name).mkdir(parents=True)
    shutil.copy(path, scratch / "blobs" / path.parent.name / path.name)
    return BlobStore(scratch).is_intact(path.name)


async def wait_until(predicate, what: str, timeout: float = 120.0) -> float:
    """Poll ``predicate`` until true; seconds it took (a guard, not a performance check)."""
    t0 = time.monotonic()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.1)
        return time.monotonic() - t0
    raise AssertionError(f"{what}: not within {timeout} s")


async def test_large_store_killed_at_quorum_is_healed_wiped_node_refilled_refused_blob_collected(tmp_path):
    data = tmp_path / "swarm"
    spec = SwarmSpec(data_dir=data, processes=True, reconcile_interval=1.0, collect_grace=8.0,
                     upload_timeout=4.0)
    record = tmp_path / "scan.bin"
    record.write_bytes(os.urandom(48 * MiB))
    common = ["--swarm", str(data), "--subject", "alice"]
    with trio.fail_after(600):
        async with Swarm.open(spec, fresh=True) as swarm:
            nodes = swarm.manifest.storage
            dirs = {n: swarm.files.agent_dir(n) for n in nodes}
            await cli("patient", *common, "--org", "hospital-a", "register")

            # storage-3 stalls; the CLI gets its quorum from the other two, commits, and is
            # SIGKILLed as soon as it says so (its third put is abandoned mid-way)
            swarm.stall("storage-3")
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "agents.cli", "patient", *common, "store", str(record), "--label", "imaging",
                 "--record-id", "scan-1", "--media-type", "application/octet-stream"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
            out = b""
            with trio.fail_after(300):
                while b"stored scan-1" not in out:
                    chunk = await proc.stdout.receive_some(4096)
                    assert chunk, f"the CLI ended without storing: {out.decode()}"
                    out += chunk
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed = time.monotonic()
            await proc.stdout.aclose()
            held = [n for n in nodes if blob_files(dirs[n])]
            assert held == ["storage-1", "storage-2"]
            swarm.resume("storage-3")

            await wait_until(lambda: read_status(data).records and read_status(data).complete,
                             "all r copies after the CLI was killed")
            healed = time.monotonic() - killed
            status = read_status(data)
            [rec] = status.records
            assert (rec["owner"], rec["record_id"], rec["holders"]) == ("alice", "scan-1", nodes)
            cid = rec["cid"]
            for n in nodes:
                assert verify_copy(blob_files(dirs[n])[cid], tmp_path / "check")
            # the abandoned partial upload on storage-3 expired (upload_timeout)
            await wait_until(lambda: not any((dirs["storage-3"] / "tmp").iterdir()), "partial upload expiry")

            # `emrshare storage status` shows it, as text and as JSON
            shown = (await cli("storage", "status", "--swarm", str(data))).stdout.decode()
            assert cid in shown and "3/3" in shown and "alice" in shown
            as_json = json.loads((await cli("storage", "status", "--swarm", str(data), "--json")).stdout)
            assert as_json["complete"] and as_json["records"][0]["holders"] == nodes
            assert all(n["time"] is not None for n in as_json["nodes"].values())

            # a storage node loses its disk and comes back: refilled from the others
            swarm.kill("storage-2")
            shutil.rmtree(dirs["storage-2"])
            wiped = time.monotonic()
            await swarm.start_process("storage-2")
            await wait_until(lambda: cid in blob_files(dirs["storage-2"]) and read_status(data).complete,
                             "refill of a wiped node")
            refilled = time.monotonic() - wiped
            assert verify_copy(blob_files(dirs["storage-2"])[cid], tmp_path / "check")

            # a refused store (the record id is taken): its blob is collected after the grace
            small = tmp_path / "note.txt"
            small.write_bytes(b"a second record under the same id")
            refused = await cli("patient", *common, "store", str(small), "--label", "imaging",
                                "--record-id", "scan-1", "--media-type", "text/plain", check=False)
            assert refused.returncode != 0 and b"duplicate" in refused.stderr
            orphans = {n: set(blob_files(dirs[n])) - {cid} for n in nodes}
            assert sum(len(o) for o in orphans.values()) >= 2  # its quorum was written
            await wait_until(lambda: all(set(blob_files(dirs[n])) == {cid} for n in nodes),
                             "collection of the refused store's blob")
            assert read_status(data).complete
    print(f"\nr copies {healed:.1f} s after the CLI was killed; wiped node refilled in {refilled:.1f} s")
