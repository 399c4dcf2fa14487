"""``emrshare bench storage``: put/get throughput with replication 3 on loopback.

Starts three storage node processes (``python -m agents.storage serve``) on
127.0.0.1 with fresh data directories in a temporary directory, and a client
in this process; then, for 4 KiB, 1 MiB and 32 MiB blobs of random bytes,
times replicated puts (r=3, w=2, each replica fsyncs before acknowledging) and
verified gets. Next to them, measured in the same run on the same machine:

* bare sha256: ``hashlib.sha256`` over an in-memory buffer of the same size;
* bare disk: write the same number of bytes to a file in the same temporary
  directory and fsync it (per op for 4 KiB/1 MiB, like a put does).

Target (reported, not asserted): get of 32 MiB blobs at >= 50% of bare sha256
throughput. ``--json FILE`` also writes the results as JSON (``--json -``: JSON on stdout instead of the table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

MiB = 1 << 20
SIZES = [(4 * 1024, 200), (MiB, 40), (32 * MiB, 4)]
TARGET_GET_VS_SHA256 = 0.5


def _bare_sha256(size: int, reps: int) -> float:
    buf = os.urandom(size)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            hashlib.sha256(buf).digest()
        best = min(best, time.perf_counter() - t)
    return best


def _bare_disk(base: Path, size: int, reps: int) -> float:
    buf = os.urandom(size)
    t = time.perf_counter()
    for i in range(reps):
        path = base / f"bare-{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - t
    for i in range(reps):
        (base / f"bare-{i}").unlink()
    return elapsed


async def _start_node(ident: str, base: Path) -> trio.Process:
    cmd = [
        sys.executable, "-m", "agents.storage", "serve", "--id", ident,
        "--dir", str(base / ident), "--listen", "tcp://127.0.0.1:0",
        "--key-file", str(base / f"{ident}.key"), "--directory", str(base / "directory.json"),
    ]  # fmt: skip
    with open(base / f"{ident}.log", "ab") as log:
        proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=log)
    line = b""
    while not line.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(1)
        if not chunk:
            raise RuntimeError(f"storage node {ident} exited; see {base / (ident + '.log')}")
        line += chunk
    proc.address = line.decode().split()[1]  # type: ignore[attr-defined]
    return proc


async def _run(base: Path, message_size: int = 8 * MiB, pipeline: int = 2, sizes=tuple(SIZES)) -> dict:
    from agents.storage.client import StorageClient
    from bus import open_node
    from core import ecdsa

    ids = ["s1", "s2", "s3", "bench-client"]
    keys = {i: ecdsa.generate_private_key() for i in ids}
    for i, k in keys.items():
        (base / f"{i}.key").write_text(k.hex())
    pubs = {i: ecdsa.public_key(k) for i, k in keys.items()}
    (base / "directory.json").write_text(json.dumps({i: p.hex() for i, p in pubs.items()}))
    procs: dict[str, trio.Process] = {}
    rows = []
    try:
        async with trio.open_nursery() as nursery:

            async def start(ident: str) -> None:
                procs[ident] = await _start_node(ident, base)

            for ident in ids[:3]:
                nursery.start_soon(start, ident)
        async with open_node() as bus:
            for ident, proc in procs.items():
                bus.add_route(ident, proc.address)  # type: ignore[attr-defined]
            ep = bus.endpoint(
                "bench-client",
                signer=lambda m: ecdsa.sign_raw(keys["bench-client"], m),
                directory=pubs.get,
                verifier=ecdsa.is_valid_raw,
            )
            client = StorageClient(ep, ids[:3], replicas=3, write_quorum=2, message_size=message_size, pipeline=pipeline)
            await client.put(b"warm-up")
            for size, reps in sizes:
                blobs = [os.urandom(size) for _ in range(reps)]
                t = time.perf_counter()
                cids = [await client.put(b) for b in blobs]
                put_s = time.perf_counter() - t
                t = time.perf_counter()
                for cid, b in zip(cids, blobs):
                    if len(await client.get(cid)) != len(b):
                        raise RuntimeError("short read")
                get_s = time.perf_counter() - t
                sha_s = await trio.to_thread.run_sync(_bare_sha256, size, reps)
                disk_s = await trio.to_thread.run_sync(_bare_disk, base, size, reps)
                total = size * reps / 1e6
                rows.append(
                    {
                        "size": size,
                        "ops": reps,
                        "put_MBps": total / put_s,
                        "put_ops_per_s": reps / put_s,
                        "get_MBps": total / get_s,
                        "get_ops_per_s": reps / get_s,
                        "bare_sha256_MBps": total / sha_s,
                        "bare_disk_write_fsync_MBps": total / disk_s,
                        "bare_disk_ops_per_s": reps / disk_s,
                    }
                )
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()
    big = rows[-1]
    ratio = big["get_MBps"] / big["bare_sha256_MBps"]
    return {
        "benchmark": "storage",
        "replicas": 3,
        "write_quorum": 2,
        "transport": "tcp loopback, 3 node processes",
        "message_size": message_size,
        "pipeline": pipeline,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "results": rows,
        "target": {
            "get_32MiB_vs_bare_sha256": ratio,
            "required": TARGET_GET_VS_SHA256,
            "met": ratio >= TARGET_GET_VS_SHA256,
        },
    }


def _fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // 1024} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emrshare bench storage", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': stdout only)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the nodes' data (default: a temp dir)")
    parser.add_argument("--message-mib", type=int, default=8, help="data per bus message in MiB (1..8)")
    parser.add_argument("--pipeline", type=int, default=2, help="get requests in flight per read")
    args = parser.parse_args(argv)
    if not 1 <= args.message_mib <= 8:
        parser.error("--message-mib must be 1..8")
    with tempfile.TemporaryDirectory(prefix="emrshare-bench-storage-", dir=args.dir) as tmp:
        result = trio.run(_run, Path(tmp), args.message_mib * MiB, args.pipeline)
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"storage: r=3, w=2, {result['transport']}")
    print(f"{'size':>8} {'ops':>5} {'put MB/s':>9} {'put op/s':>9} {'get MB/s':>9} {'get op/s':>9} "
          f"{'sha256 MB/s':>12} {'disk+fsync MB/s':>16} {'disk op/s':>10}")  # fmt: skip
    for r in result["results"]:
        print(
            f"{_fmt_size(r['size']):>8} {r['ops']:>5} {r['put_MBps']:>9.1f} {r['put_ops_per_s']:>9.1f} "
            f"{r['get_MBps']:>9.1f} {r['get_ops_per_s']:>9.1f} {r['bare_sha256_MBps']:>12.1f} "
            f"{r['bare_disk_write_fsync_MBps']:>16.1f} {r['bare_disk_ops_per_s']:>10.1f}"
        )
    t = result["target"]
    print(
        f"target: get(32 MiB) >= {t['required']:.0%} of bare sha256: "
        f"{t['get_32MiB_vs_bare_sha256']:.0%} -> {'met' if t['met'] else 'NOT met'}"
    )
    return 0
