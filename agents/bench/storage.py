"""``emrshare bench storage``: put/get throughput with replication 3 on loopback.

Starts three storage node processes (``python -m agents.storage serve``) on
127.0.0.1 with fresh data directories in a temporary directory, and a client
in this process; then, for 4 KiB, 1 MiB and 32 MiB blobs of random bytes,
times replicated puts (r=3, w=2, each replica fsyncs before acknowledging) and
verified gets. Next to them, measured in the same run on the same machine:

* bare sha256: ``hashlib.sha256`` over an in-memory buffer of the same size;
* bare disk: write the same number of bytes to a file in the same temporary
  directory and fsync it (per op for 4 KiB/1 MiB, like a put does).

Gets are streamed (:meth:`StorageClient.read_to` into a sink that drops the
verified pieces), as the record read path uses them, in pieces of
``--message-mib`` (default 2, what :meth:`StorageClient.get` reads) with
``--pipeline`` in flight (default 2: 4 MiB in flight, as 1 MiB x 4 before).
Each get is followed by a bare sha256 of as many bytes in this thread; the
target ratio compares the two sums, so both ran under the same load (the
machine may be shared; the best of 3 bare runs apart is printed next to it).
The client's CPU per MiB got (this process, the gets only) is printed too, and the
storage node processes' (user + system time from ``/proc``, Linux only: the kernel's
loopback TCP work lands mostly on the sending node); likewise the CPU per put of
the client and of the three nodes together (fsyncs, receipt signatures). On a
loaded machine the get ratio follows the CPU the two sides spend per MiB.

Then the CPU per MiB of each step of a get, in one thread of this process
(node: read, envelope encoding, channel sealing, framing; client: deframing,
channel opening, decoding, CID check), and next to it what signed mode (an
ECDSA signature over every envelope, the bus before channels) would add.

The path a 32 MiB get takes (what the breakdown times): the node reads each 2 MiB
piece on its event loop (marked verified at rest and in the page cache:
``BlobStore.read_nowait``, no hash, no thread), packs the compact reply with the
piece copied once (``encode_compact_reply``), seals it behind its length prefix
and writes it; the client reads the body straight into the frame's buffer once
half of it arrived or waits in the socket (``FIONREAD``), opens it in place, and
decodes the reply with the piece as that same buffer (``decode_reply_in_place``:
no copy); it checks each piece's chunks in order on its event loop and sends the
request ``--pipeline`` pieces ahead as soon as a piece is passed on, before
checking the next, so the node prepares a piece while the client checks the one
before. Each byte is hashed once on each side (the node's mark from the put, the
client's CID check); every frame is sealed. What is left is mostly the two
hashes' worth of CPU and the kernel's loopback copies: on a 2-core machine
shared with other work the get ratio follows the CPU the two sides spend per MiB
(2026-12-01, docs/reports/bench-storage.txt).

Then the memory of a record read (``--read-mib``, default 200; 0 skips it): a
sealed record of that many MiB of plaintext is sealed to a file and stored
with ``put_file``, and a fresh child process (``python -c``, the same imports
as a patient's CLI, and its :func:`agents.runtime.return_freed_memory`) reads
it the way ``emrshare patient read --out FILE`` does once the ledger named the CID: streamed from the storage nodes through
the record opener into a file (:func:`agents.recordio.read_record_to_file`,
owner key path). It reports its peak RSS (``VmHWM``) and its RSS after the
imports, before the read. A second child reads the same record the in-memory
way (``StorageClient.get`` then ``open_record``, what ``read`` without
``--out`` does) for comparison.

Targets (reported, not asserted): get of 32 MiB blobs at >= 40% of bare sha256
throughput (issue 14; against the sha256 run after each get); the streamed read's peak RSS under
64 MiB. ``--json FILE`` also writes the results as JSON (``--json -``: JSON on
stdout instead of the table).
"""

from __future__ import annotations

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

from agents.bench._output import bench_parser, write_json

MiB = 1 << 20
SIZES = [(4 * 1024, 200), (MiB, 40), (32 * MiB, 8)]
TARGET_GET_VS_SHA256 = 0.4
TARGET_READ_PEAK_MIB = 64


def _bare_sha256(size: int, reps: int) -> float:
    buf = os.urandom(size)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            hashlib.sha256(buf).digest()
        best = min(best, time.perf_counter() - t)
    return best


def _nodes_cpu(procs: dict) -> float | None:
    """CPU seconds (user + system) the storage node processes used so far (Linux's
    ``/proc/PID/stat``; None elsewhere): a get's or a put's cost on the node side."""
    total = 0
    try:
        for proc in procs.values():
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def _per(used: tuple[float | None, float | None], n: float) -> float | None:
    before, after = used
    return None if before is None or after is None else (after - before) * 1e3 / n


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


async def _drop(piece: bytes) -> None:
    """A read sink that keeps nothing (the pieces were verified before they got here)."""


_CHILD = """
import json, sys
import trio
from agents.bench.storage import _child_read
print(json.dumps(trio.run(_child_read, json.loads(sys.argv[1]))))
"""


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB: ``VmRSS`` now, ``VmHWM`` its high-water
    mark since this process's exec (``ru_maxrss`` is not: Linux carries it over a
    fork + exec, so a child would report its parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def _child_read(spec: dict) -> dict:
    """In a fresh process: read the sealed record ``spec["cid"]`` (streamed or in memory)."""
    from agents.recordio import read_record_to_file
    from agents.storage.client import StorageClient
    from bus import open_node
    from core import ecdsa
    from core import record as recordmod
    from agents.runtime import return_freed_memory

    return_freed_memory()  # as the user CLI does (agents/cli/user.py)
    after_imports = _status_kib("VmRSS")
    key = bytes.fromhex(spec["key"])
    pubs = {i: bytes.fromhex(p) for i, p in spec["pubs"].items()}
    provider = recordmod.owner_key_provider(bytes.fromhex(spec["box"]))
    async with open_node() as bus:
        for ident, address in spec["routes"].items():
            bus.add_route(ident, address)
        ep = bus.endpoint("bench-reader", signer=lambda m: ecdsa.sign_raw(key, m), directory=pubs.get,
                          verifier=ecdsa.is_valid_raw)
        client = StorageClient(ep, list(spec["routes"]), replicas=3, write_quorum=2)  # the agents' settings
        t = time.perf_counter()
        if spec["mode"] == "stream":
            _, written = await read_record_to_file(client, spec["cid"], provider, spec["out"])
        else:
            _, plain = recordmod.open_record(await client.get(spec["cid"]), provider)
            written = len(plain)
            del plain
        seconds = time.perf_counter() - t
        held = client.statistics().pieces_held_max
    return {"mode": spec["mode"], "bytes": written, "seconds": seconds, "rss_after_imports_kib": after_imports,
            "peak_rss_kib": _status_kib("VmHWM"), "pieces_held_max": held}


async def _read_memory(base: Path, client, routes: dict[str, str], keys: dict, pubs: dict, size: int) -> dict:
    """Seal and store a ``size``-byte record, then read it in child processes; their memory."""
    from agents.patient import _seal_file
    from core import pre

    box_sk, box_pk = pre.box_keypair()
    kp = pre.KeyPair.derive(pre.new_master_secret(), "bench")
    plain, sealed = base / "record.plain", base / "record.sealed"

    def write_plain() -> None:
        with open(plain, "wb") as f:
            for _ in range(0, size, 8 * MiB):
                f.write(os.urandom(min(8 * MiB, size - f.tell())))

    await trio.to_thread.run_sync(write_plain)
    await trio.to_thread.run_sync(lambda: _seal_file(
        plain, sealed, kp, owner_id="bench-patient", label="bench", record_id="bench-1",
        media_type="application/octet-stream", owner_box_public_key=box_pk, owner_box_secret_key=box_sk))
    plain.unlink()
    cid = await client.put_file(sealed)
    sealed.unlink()
    reader = keys["bench-reader"]
    all_pubs = {i: p.hex() for i, p in pubs.items()}
    out = {"record_bytes": size, "cid": cid, "target_peak_mib": TARGET_READ_PEAK_MIB}
    for mode in ("stream", "memory"):
        spec = {"mode": mode, "cid": cid, "routes": routes, "key": reader.hex(), "pubs": all_pubs,
                "box": box_sk.hex(), "out": str(base / "record.out")}
        done = await trio.run_process([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_stdout=True)
        result = json.loads(done.stdout)
        if result["bytes"] != size:
            raise RuntimeError(f"{mode} read returned {result['bytes']} bytes, not {size}")
        out[mode] = result
        (base / "record.out").unlink(missing_ok=True)
    out["met"] = out["stream"]["peak_rss_kib"] < TARGET_READ_PEAK_MIB * 1024
    return out


async def _run(base: Path, message_size: int = 2 * MiB, pipeline: int = 2, sizes=tuple(SIZES),
               read_mib: int = 200) -> dict:
    from agents.storage.client import StorageClient
    from bus import open_node
    from core import ecdsa

    ids = ["s1", "s2", "s3", "bench-client", "bench-reader"]
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
            await client.read_to(await client.put(os.urandom(4 * MiB)), _drop)
            for size, reps in sizes:
                blobs = [os.urandom(size) for _ in range(reps)]
                n0, c = _nodes_cpu(procs), time.process_time()
                t = time.perf_counter()
                cids = [await client.put(b) for b in blobs]
                put_s = time.perf_counter() - t
                put_cpu, put_nodes = time.process_time() - c, (n0, _nodes_cpu(procs))
                del blobs
                # each get is followed by a bare sha256 of as many bytes, in this thread: the
                # ratio compares the two under the same load (the machine may be shared)
                buf = os.urandom(size)
                get_s = paired_sha_s = get_cpu = 0.0
                n0 = _nodes_cpu(procs)
                for cid in cids:
                    t, c = time.perf_counter(), time.process_time()
                    if await client.read_to(cid, _drop) != size:
                        raise RuntimeError("short read")
                    get_s += time.perf_counter() - t
                    get_cpu += time.process_time() - c
                    t = time.perf_counter()
                    hashlib.sha256(buf).digest()
                    paired_sha_s += time.perf_counter() - t
                get_nodes = (n0, _nodes_cpu(procs))  # the paired sha256 runs here, not on the nodes
                del buf
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
                        "get_vs_paired_sha256": paired_sha_s / get_s,
                        "get_client_cpu_ms_per_MiB": get_cpu * 1e3 / (size * reps / MiB),
                        "get_nodes_cpu_ms_per_MiB": _per(get_nodes, size * reps / MiB),
                        "put_client_cpu_ms_per_op": put_cpu * 1e3 / reps,
                        "put_nodes_cpu_ms_per_op": _per(put_nodes, reps),
                        "bare_disk_write_fsync_MBps": total / disk_s,
                        "bare_disk_ops_per_s": reps / disk_s,
                    }
                )
            cpu = await trio.to_thread.run_sync(_cpu_per_mib, base)
            memory = None
            if read_mib:
                memory = await _read_memory(base, client, {i: p.address for i, p in procs.items()},  # type: ignore[attr-defined]
                                            keys, pubs, read_mib * MiB)
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
    ratio = big["get_vs_paired_sha256"]
    return {
        "benchmark": "storage",
        "replicas": 3,
        "write_quorum": 2,
        "transport": "tcp loopback, 3 node processes",
        "message_size": message_size,
        "pipeline": pipeline,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "results": rows,
        "read_memory": memory,
        "cpu_per_MiB": cpu,
        "target": {
            "get_32MiB_vs_bare_sha256": ratio,
            "get_32MiB_vs_best_bare_sha256": big["get_MBps"] / big["bare_sha256_MBps"],
            "required": TARGET_GET_VS_SHA256,
            "met": ratio >= TARGET_GET_VS_SHA256,
        },
    }


def _cpu_per_mib(base: Path, reps: int = 16) -> dict:
    """CPU per MiB of a get, step by step, in this process (one thread, best of 3): what
    the node and the client spend on a 1 MiB ``storage.get`` reply on a channel, and
    what signed mode's envelope signature (sign, verify) would cost on top."""
    from agents.storage.blobstore import BlobStore
    from bus import Envelope, FrameDecoder, Handshake, MessageType, decode_envelope, encode_frame
    from bus.envelope import SIGNING_DOMAIN, decode_reply_in_place, encode_compact_reply
    from core import ecdsa, protocol

    key = ecdsa.generate_private_key()
    pub = ecdsa.public_key(key)
    store = BlobStore(base / "cpu")
    blob = os.urandom(reps * MiB)
    cid = store.put(blob)
    piece = store.read(cid, 0, MiB)
    body = protocol.StorageGetReply(piece, len(blob)).to_wire()

    def reply(signer):
        return Envelope.create_encoded(type=MessageType.REPLY, kind="storage.get", sender="s1", recipient="c",
                                       body=body, timestamp=int(time.time() * 1000), signer=signer,
                                       correlation_id=os.urandom(16))[1]

    signed = reply(lambda m: ecdsa.sign_raw(key, m))
    signed_env = decode_envelope(signed)
    wire = encode_compact_reply(MessageType.REPLY, 7, body)  # what a channel carries: a compact reply
    node_side, client_side = Handshake(initiator=False), Handshake(initiator=True)
    sealer, opener = node_side.finish(client_side.hello), client_side.finish(node_side.hello)
    sealed = [bytearray(sealer.seal(0, wire)) for _ in range(3 * reps)]  # one per opening below (counters);
    # bytearrays, as a receiver's large frames are (a channel opens them in place)
    frame = encode_frame(sealed[0], 16 * MiB + 64)
    received = iter([bytearray(wire) for _ in range(3 * reps)])  # opened frames: decoded in place
    env = decode_envelope(wire)
    data = protocol.StorageGetReply.from_wire(env.body).data
    digests = store.leaves(cid)[1]
    to_open = iter(sealed)

    chunk = 262_144

    def check() -> None:
        view = memoryview(data)
        for i in range(0, MiB, chunk):
            if hashlib.sha256(view[i : i + chunk]).digest() != digests[i // chunk]:
                raise RuntimeError("bench piece does not match")

    steps = {
        "node: read (marked, no hash)": lambda i: store.read_nowait(cid, i * MiB, MiB)
        or store.read(cid, i * MiB, MiB),  # (on the node's loop when cached, as a node reads it)
        "node: read (hash every chunk)": lambda i: store.read_range(cid, i * MiB, MiB, use_mark=False),
        "node: envelope encode": lambda i: encode_compact_reply(MessageType.REPLY, 7, body),
        "node: channel seal": lambda i: sealer.seal(0, wire),
        "node: frame": lambda i: len(sealed[0]).to_bytes(4, "big"),  # a large payload is sent after its prefix
        "client: deframe": lambda i: FrameDecoder(16 * MiB + 64).feed(frame),
        "client: channel open": lambda i: opener.open(next(to_open)),
        "client: decode": lambda i: decode_reply_in_place(next(received)),
        "client: CID check": lambda i: check(),
        "signed mode: envelope sign": lambda i: ecdsa.sign_raw(key, SIGNING_DOMAIN + signed[1:]),
        "signed mode: envelope verify": lambda i: ecdsa.is_valid_raw(pub, signed_env.signing_input(),
                                                                       signed_env.signature),
        "bare sha256": lambda i: hashlib.sha256(memoryview(blob)[i * MiB : (i + 1) * MiB]).digest(),
    }
    out = {}
    for name, fn in steps.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for i in range(reps):
                fn(i)
            best = min(best, time.perf_counter() - t)
        out[name] = best / reps * 1e3
    path = [k for k in out if k not in ("bare sha256", "node: read (hash every chunk)")
            and not k.startswith("signed mode")]
    total = sum(out[k] for k in path)
    channel = out["node: channel seal"] + out["client: channel open"]
    signature = out["signed mode: envelope sign"] + out["signed mode: envelope verify"]
    return {"ms_per_MiB": out, "get_path_ms_per_MiB": total, "channel_ms_per_MiB": channel,
            "channel_share": channel / total, "signed_mode_extra_ms_per_MiB": signature}


def _fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} ms"


def _fmt_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // 1024} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("storage", __doc__)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the nodes' data (default: a temp dir)")
    parser.add_argument("--message-mib", type=int, default=2,
                        help="data per bus message in MiB (1..8; default 2, what StorageClient.get reads)")
    parser.add_argument("--pipeline", type=int, default=2, help="get requests in flight per read (default 2)")
    parser.add_argument("--read-mib", type=int, default=200,
                        help="MiB of the record whose read memory is measured (default 200; 0: skip)")
    args = parser.parse_args(argv)
    if not 1 <= args.message_mib <= 8:
        parser.error("--message-mib must be 1..8")
    if not 0 <= args.read_mib <= 250:
        parser.error("--read-mib must be 0..250 (a storage node stores blobs up to 256 MiB)")
    with tempfile.TemporaryDirectory(prefix="emrshare-bench-storage-", dir=args.dir) as tmp:
        result = trio.run(_run, Path(tmp), args.message_mib * MiB, args.pipeline, tuple(SIZES), args.read_mib)
    if write_json(args.json, result):
        return 0
    print(f"storage: r=3, w=2, {result['transport']}")
    print(f"{'size':>8} {'ops':>5} {'put MB/s':>9} {'put op/s':>9} {'get MB/s':>9} {'get op/s':>9} "
          f"{'sha256 MB/s':>12} {'disk+fsync MB/s':>16} {'disk op/s':>10}")  # fmt: skip
    for r in result["results"]:
        print(
            f"{_fmt_size(r['size']):>8} {r['ops']:>5} {r['put_MBps']:>9.1f} {r['put_ops_per_s']:>9.1f} "
            f"{r['get_MBps']:>9.1f} {r['get_ops_per_s']:>9.1f} {r['bare_sha256_MBps']:>12.1f} "
            f"{r['bare_disk_write_fsync_MBps']:>16.1f} {r['bare_disk_ops_per_s']:>10.1f}"
        )
    cpu = result["cpu_per_MiB"]
    print("CPU per MiB of a get, one thread: " + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu["ms_per_MiB"].items()))
    print(f"get path {cpu['get_path_ms_per_MiB']:.2f} ms/MiB of CPU on a channel, of which sealing and opening "
          f"{cpu['channel_ms_per_MiB']:.2f} ms ({cpu['channel_share']:.0%}); signed mode would add "
          f"{cpu['signed_mode_extra_ms_per_MiB']:.2f} ms (envelope sign and verify)")
    mem = result["read_memory"]
    if mem is not None:
        for mode, what in (("stream", "streamed to a file"), ("memory", "in memory (get + open_record)")):
            m = mem[mode]
            print(f"read of a {mem['record_bytes'] // MiB} MiB record, {what}: peak RSS "
                  f"{m['peak_rss_kib'] / 1024:.1f} MiB (after imports {m['rss_after_imports_kib'] / 1024:.1f} MiB), "
                  f"{m['bytes'] / m['seconds'] / 1e6:.1f} MB/s, at most {m['pieces_held_max']} pieces held")
        print(f"target: streamed read peak RSS < {mem['target_peak_mib']} MiB -> {'met' if mem['met'] else 'NOT met'}")
    print("get vs a bare sha256 after each get (same load): " + ", ".join(
        f"{_fmt_size(r['size'])} {r['get_vs_paired_sha256']:.0%}" for r in result["results"])
        + "; client CPU per MiB got: " + ", ".join(
        f"{_fmt_size(r['size'])} {r['get_client_cpu_ms_per_MiB']:.2f} ms" for r in result["results"])
        + "; the nodes' CPU per MiB got: " + ", ".join(
        f"{_fmt_size(r['size'])} {_fmt_ms(r['get_nodes_cpu_ms_per_MiB'])}" for r in result["results"]))
    print("CPU per put (r=3: three nodes' copies), client: " + ", ".join(
        f"{_fmt_size(r['size'])} {r['put_client_cpu_ms_per_op']:.2f} ms" for r in result["results"])
        + "; the nodes together: " + ", ".join(
        f"{_fmt_size(r['size'])} {_fmt_ms(r['put_nodes_cpu_ms_per_op'])}" for r in result["results"]))
    t = result["target"]
    print(
        f"target: get(32 MiB) >= {t['required']:.0%} of bare sha256 (each get against a sha256 of as many bytes "
        f"right after it): {t['get_32MiB_vs_bare_sha256']:.0%} -> {'met' if t['met'] else 'NOT met'} "
        f"(against the best of 3 bare runs apart: {t['get_32MiB_vs_best_bare_sha256']:.0%})"
    )
    return 0
