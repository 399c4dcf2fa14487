"""Storage nodes as separate processes over TCP: SIGKILL during writes, replace, repair."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from agents.storage.client import StorageClient
from bus import open_node
from core import ecdsa

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    def __init__(self, ident: str, base: Path):
        self.ident = ident
        self.base = base
        self.proc: trio.Process | None = None
        self.address = ""

    async def start(self) -> None:
        cmd = [
            sys.executable, "-m", "agents.storage", "serve",
            "--id", self.ident,
            "--dir", str(self.base / self.ident),
            "--listen", "tcp://127.0.0.1:0",
            "--key-file", str(self.base / f"{self.ident}.key"),
            "--directory", str(self.base / "directory.json"),
            # the other nodes and the test's client (which runs the repair) act as storage nodes
            *[arg for ident in ["s1", "s2", "s3", "s4", "client"] for arg in ("--storage", ident)],
        ]  # fmt: skip
        with open(self.base / f"{self.ident}.log", "ab") as log:
            self.proc = await trio.lowlevel.open_process(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
        line = b""
        while not line.endswith(b"\n"):
            chunk = await self.proc.stdout.receive_some(1)
            assert chunk, f"{self.ident} exited before listening"
            line += chunk
        word, self.address = line.decode().split()
        assert word == "listening"

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await self.proc.wait()
            self.kill()
        await self.proc.wait()
        await self.proc.stdout.aclose()


def make_keys(base: Path, ids: list[str]) -> dict[str, bytes]:
    keys = {i: ecdsa.generate_private_key() for i in ids}
    for i, k in keys.items():
        (base / f"{i}.key").write_text(k.hex())
    (base / "directory.json").write_text(json.dumps({i: ecdsa.public_key(k).hex() for i, k in keys.items()}))
    return keys


async def test_sigkill_during_writes_then_replace_and_repair(tmp_path) -> None:
    ids = ["s1", "s2", "s3", "s4", "client"]
    keys = make_keys(tmp_path, ids)
    pubs = {i: ecdsa.public_key(k) for i, k in keys.items()}
    procs = {i: NodeProcess(i, tmp_path) for i in ["s1", "s2", "s3"]}
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for p in procs.values():
                    nursery.start_soon(p.start)
            async with open_node(connect_attempts=2, backoff_base=0.02) as bus:
                for p in procs.values():
                    bus.add_route(p.ident, p.address)
                ep = bus.endpoint(
                    "client",
                    signer=lambda m: ecdsa.sign_raw(keys["client"], m),
                    directory=pubs.get,
                    verifier=ecdsa.is_valid_raw,
                )
                client = StorageClient(ep, ["s1", "s2", "s3"], timeout=10)
                acked: dict[str, str] = {}
                killed = trio.Event()

                async def writer(w: int) -> None:
                    for i in range(12):
                        # sizes: small, chunked (> 1 MiB message), around the 256 KiB boundary
                        size = [1000, 2 * MiB + 3, 262_144, 300_000][(i + w) % 4]
                        data = os.urandom(size)
                        cid = await client.put(data)
                        acked[cid] = hashlib.sha256(data).hexdigest()
                        if len(acked) == 10:
                            procs["s2"].kill()  # mid-stream for the other writers
                            killed.set()

                async with trio.open_nursery() as nursery:
                    for w in range(3):
                        nursery.start_soon(writer, w)
                assert killed.is_set() and len(acked) == 36
                await procs["s2"].proc.wait()
                assert procs["s2"].proc.returncode == -signal.SIGKILL

                # writes went on after the kill: the dead node's disk has only part of them
                on_s2 = {p.name for p in (tmp_path / "s2" / "blobs").glob("*/*")}
                assert 0 < len(on_s2 & set(acked)) < len(acked)

                # every acknowledged blob is readable with one node dead
                for cid, digest in acked.items():
                    assert hashlib.sha256(await client.get(cid)).hexdigest() == digest

                # replace the dead node by a new one, then repair
                procs["s4"] = NodeProcess("s4", tmp_path)
                await procs["s4"].start()
                bus.add_route("s4", procs["s4"].address)
                client.set_nodes(["s1", "s3", "s4"])
                report = await client.repair()
                assert report.failed == 0 and report.blobs == len(acked)
                assert sorted(report.reachable) == ["s1", "s3", "s4"]
                for cid in acked:
                    assert sorted(await client.locate(cid)) == ["s1", "s3", "s4"]
                # reads now also work from the replacement alone
                for p in ("s1", "s3"):
                    await procs[p].stop()
                for cid, digest in list(acked.items())[:5]:
                    assert hashlib.sha256(await client.get(cid)).hexdigest() == digest
    finally:
        for p in procs.values():
            p.kill()
            if p.proc is not None:
                with trio.move_on_after(5):
                    await p.proc.wait()
                    await p.proc.stdout.aclose()
