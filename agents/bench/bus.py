"""Benchmark of the message bus: ``emrshare bench bus [--json FILE] [--quick]``.

Measures round trips per second (request/reply) and messages per second one
way (fire-and-forget), for small (200 B) and large (64 KiB) bodies, in four
modes: ``local`` (two agents of one node: no crypto), ``channel`` (loopback
TCP on an authenticated encrypted channel: the default), ``tls`` (the same
channel inside TLS 1.3, as between machines, with a throwaway self-signed
server certificate) and ``signed``
(loopback TCP with every envelope ECDSA-signed and verified, the bus before
channels, kept for comparison), with real ECDSA (core.ecdsa) wherever the bus
signs or verifies. Both ends run in this process, so the time split covers the
whole exchange: the share spent in signing, in verifying, and in everything
else (msgpack, framing, channel encryption, trio, sockets), and the CPU time
per operation (both ends: steadier than wall time on a shared machine). The
envelope size is what the sender's statistics count: compact envelopes
(``local``, ``channel``) or signed ones.

The last lines are the channel/signed ratio of small round trips, the figure issue
14's target ("round trips on an authenticated TCP channel at least 3x the
signed-envelope figure in the same run") maps to, measured apart from the table:
:data:`RATIO_ROUNDS` rounds, each a channel run and a signed run of the same length
back to back (which mode goes first alternates from round to round), every run
after the same warm-up (:data:`WARM_UP` round trips on its connection) and a full
garbage collection. Each round gives a ratio of two runs under the same load; the
figure is the median of the rounds' ratios by CPU time (both ends run in this
process, so CPU time is the cost of a round trip; wall time also counts the time
other processes took the core, which on a shared machine moves within seconds),
printed with the median by wall time and every round's numbers. The table's own
channel and signed rows, minutes apart, compare loads as much as modes: their ratio
is printed next to it, as a single run's.
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio

from bus import open_node
from bus.testing import Keyring
from core import ecdsa

from agents.bench._output import bench_parser, write_json

SMALL = 200
LARGE = 64 * 1024
WARM_UP = 50
"""Round trips on a fresh connection before a run is timed (in every mode)."""


class _Timed:
    """ECDSA callables that add up the time spent in them."""

    def __init__(self) -> None:
        self.sign_s = 0.0
        self.verify_s = 0.0

    def sign(self, private: bytes, message: bytes) -> bytes:
        t = time.perf_counter()
        try:
            return ecdsa.sign_raw(private, message)
        finally:
            self.sign_s += time.perf_counter() - t

    def is_valid(self, public: bytes, message: bytes, signature: bytes) -> bool:
        t = time.perf_counter()
        try:
            return ecdsa.is_valid_raw(public, message, signature)
        finally:
            self.verify_s += time.perf_counter() - t

    def reset(self) -> None:
        self.sign_s = self.verify_s = 0.0


MODES = ("local", "channel", "tls", "signed")


def _tls_transports(directory: str) -> tuple[Any, Any]:
    """(server, client) TcpTransports with TLS 1.3 under a throwaway self-signed
    certificate for 127.0.0.1 (written to ``directory`` for ``ssl`` to load)."""
    import datetime
    import ipaddress
    import os
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from bus import TcpTransport

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert_path)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    return TcpTransport(server_ssl=server), TcpTransport(client_ssl=client)


async def _scenario(mode: str, size: int, pattern: str, count: int) -> dict[str, Any]:
    timed = _Timed()
    ring = Keyring(
        generate=ecdsa.generate_private_key,
        public_key=ecdsa.public_key,
        sign=timed.sign,
        verify=timed.is_valid,
    )
    channels = mode != "signed"
    server_options: dict[str, Any] = {"channels": channels}
    client_options: dict[str, Any] = {"channels": channels}
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "tls":
            server_tcp, client_tcp = _tls_transports(tmp)
            server_options["transports"] = {"tcp": server_tcp}
            client_options["transports"] = {"tcp": client_tcp}
        return await _measure(mode, size, pattern, count, timed, ring, server_options, client_options)


async def _measure(mode: str, size: int, pattern: str, count: int, timed: _Timed, ring: Keyring,
                   server_options: dict[str, Any], client_options: dict[str, Any]) -> dict[str, Any]:
    body = bytes(size)
    received = 0
    done = trio.Event()

    async def reply(msg):
        return msg.body

    async def sink(msg):
        nonlocal received
        received += 1
        if received == count:
            done.set()

    async with open_node(**server_options) as server, open_node(**client_options) as client:
        if mode != "local":
            client.add_route("server", await server.listen("tcp://127.0.0.1:0"))
            caller = client.endpoint("client", inbox_size=1024, **ring.credentials("client"))
        else:
            caller = server.endpoint("client", inbox_size=1024, **ring.credentials("client"))
        callee = server.endpoint("server", inbox_size=1024, **ring.credentials("server"))
        callee.register("echo", reply, quick=True)  # it never waits: answered from the reader
        callee.register("sink", sink)
        for _ in range(WARM_UP):  # warm up: connect, prove, caches (the same in every mode)
            await caller.request("server", "echo", body)
        gc.collect()  # every run starts with the same garbage behind it
        timed.reset()
        start = time.perf_counter()
        cpu_start = time.process_time()
        if pattern == "round-trip":
            for _ in range(count):
                await caller.request("server", "echo", body)
        else:
            for _ in range(count):
                await caller.send("server", "sink", body)
            await done.wait()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        wire = caller.statistics().sent_by_kind["echo" if pattern == "round-trip" else "sink"]
    sign_share = timed.sign_s / wall
    verify_share = timed.verify_s / wall
    return {
        "mode": mode,
        "body_bytes": size,
        "pattern": pattern,
        "count": count,
        "seconds": round(wall, 4),
        "per_second": round(count / wall, 1),
        "us_per_op": round(1e6 * wall / count, 1),
        "cpu_us_per_op": round(1e6 * cpu / count, 1),
        "envelope_bytes": wire.bytes // wire.messages,
        "sign_share": round(sign_share, 3),
        "verify_share": round(verify_share, 3),
        "other_share": round(max(0.0, 1 - sign_share - verify_share), 3),
    }


async def _run_all(quick: bool, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    counts = {
        ("round-trip", SMALL): 2000,
        ("round-trip", LARGE): 400,
        ("one-way", SMALL): 5000,
        ("one-way", LARGE): 1000,
    }
    results = []
    for mode in MODES:
        for size in (SMALL, LARGE):
            for pattern in ("round-trip", "one-way"):
                n = counts[(pattern, size)]
                if quick:
                    n = max(20, n // 20)
                progress(f"{mode} {size} B {pattern} x{n}")
                results.append(await _scenario(mode, size, pattern, n))
    return results


RATIO_ROUNDS = 5
"""Rounds of (channel, signed) small round trips behind the channel/signed ratio."""


async def _interleaved(rounds: int, count: int) -> list[dict[str, Any]]:
    """``rounds`` rounds of a channel run and a signed run of ``count`` small round
    trips back to back, the first mode alternating (channel first in round 0): per
    round each mode's wall and CPU time per round trip and the two ratios."""
    out = []
    for i in range(rounds):
        order = ("channel", "signed") if i % 2 == 0 else ("signed", "channel")
        runs = {mode: await _scenario(mode, SMALL, "round-trip", count) for mode in order}
        c, s = runs["channel"], runs["signed"]
        out.append({
            "first": order[0],
            "channel_us": c["us_per_op"], "signed_us": s["us_per_op"],
            "channel_cpu_us": c["cpu_us_per_op"], "signed_cpu_us": s["cpu_us_per_op"],
            "ratio": round(s["us_per_op"] / c["us_per_op"], 3),
            "cpu_ratio": round(s["cpu_us_per_op"] / c["cpu_us_per_op"], 3),
        })
    return out


def ratio_summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """The medians over ``rounds`` (from :func:`_interleaved`) of the per-round ratios
    (by CPU time: the target's figure; by wall time) and of each mode's cost."""
    med = statistics.median
    return {
        "cpu_ratio": round(med(r["cpu_ratio"] for r in rounds), 2),
        "ratio": round(med(r["ratio"] for r in rounds), 2),
        "channel_cpu_us": round(med(r["channel_cpu_us"] for r in rounds), 1),
        "signed_cpu_us": round(med(r["signed_cpu_us"] for r in rounds), 1),
        "channel_us": round(med(r["channel_us"] for r in rounds), 1),
        "signed_us": round(med(r["signed_us"] for r in rounds), 1),
    }


def channel_ratio(results: list[dict[str, Any]], key: str = "us_per_op") -> float | None:
    """Small round trips per second on a channel over those in signed mode (this run):
    by wall time (``us_per_op``) or CPU time (``cpu_us_per_op``)."""
    cost = {r["mode"]: r[key] for r in results if r["pattern"] == "round-trip" and r["body_bytes"] == SMALL}
    if not cost.get("channel") or "signed" not in cost:
        return None
    return cost["signed"] / cost["channel"]


def format_table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<9} {'body':>8} {'pattern':<10} {'ops/s':>9} {'us/op':>8} {'cpu us':>7} "
        f"{'env B':>7} {'sign':>6} {'verify':>7} {'other':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['mode']:<9} {r['body_bytes']:>8} {r['pattern']:<10} {r['per_second']:>9.0f} "
            f"{r['us_per_op']:>8.1f} {r['cpu_us_per_op']:>7.1f} {r['envelope_bytes']:>7} {100 * r['sign_share']:>5.1f}% "
            f"{100 * r['verify_share']:>6.1f}% {100 * r['other_share']:>5.1f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bus", __doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations (a smoke run)")
    args = parser.parse_args(argv)
    results = trio.run(_run_all, args.quick, lambda s: print(f"  {s}", file=sys.stderr))
    rounds, count = (2, 100) if args.quick else (RATIO_ROUNDS, 2000)
    print(f"  channel / signed: {rounds} rounds x{count} round trips, alternating which mode goes first",
          file=sys.stderr)
    each = trio.run(_interleaved, rounds, count)
    summary = ratio_summary(each)
    table_ratio = channel_ratio(results)
    report = {"benchmark": "bus", "ecdsa_backend": ecdsa.ecdsa_backend_name(), "quick": args.quick,
              "channel_over_signed": summary["cpu_ratio"], "channel_over_signed_wall": summary["ratio"],
              "ratio_rounds": {"rounds": rounds, "count": count, "warm_up": WARM_UP, "median": summary,
                               "each": each},
              "channel_over_signed_table": None if table_ratio is None else round(table_ratio, 2),
              "results": results}
    if write_json(args.json, report):
        return 0
    print(f"bus benchmark (ECDSA backend: {ecdsa.ecdsa_backend_name()}; both ends in one process)")
    print(format_table(results))
    for i, r in enumerate(each):
        print(f"  round {i + 1} ({r['first']} first): channel {r['channel_cpu_us']:.1f} us CPU "
              f"({r['channel_us']:.1f} wall), signed {r['signed_cpu_us']:.1f} us CPU ({r['signed_us']:.1f} wall): "
              f"{r['cpu_ratio']:.2f}x by CPU, {r['ratio']:.2f}x by wall")
    print(f"round trips (200 B, loopback TCP): channel / signed = {summary['cpu_ratio']:.2f}x "
          f"(median of {rounds} alternating rounds' ratios by CPU time, the issue's figure; each mode's own "
          f"median, whose quotient differs a little: channel {summary['channel_cpu_us']:.1f} us, signed "
          f"{summary['signed_cpu_us']:.1f} us per round trip; "
          f"by wall time {summary['ratio']:.2f}x"
          + ("" if table_ratio is None else f"; the table's rows, a single run each: {table_ratio:.2f}x") + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
