"""The storage client API over a real IPFS node: Kubo's RPC HTTP API.

A hospital that already runs Kubo can keep its ciphertext there instead of in
emrshare's storage nodes. The blobs get the same CIDs either way, because
emrshare's CIDs are Kubo's ``ipfs add --cid-version=1 --raw-leaves`` CIDs;
this client asks for exactly those settings on every add (``cid-version=1``,
``raw-leaves=true``, ``chunker=size-262144``, ``hash=sha2-256``) and checks
the CID Kubo answers against the one it computed itself, so a node configured
differently is caught at once instead of producing unfindable records.

Reads (``cat``) are verified like every other read: the bytes must hash to the
CID, else :class:`CorruptBlob` (nothing unverified is returned).

Pointing a swarm at Kubo: run ``ipfs daemon`` (its RPC API listens on
``http://127.0.0.1:5001`` by default; never expose it publicly — it has admin
rights over the node), then give the storage client
``KuboClient("http://127.0.0.1:5001")`` instead of a :class:`StorageClient`. If
the RPC API is protected (Kubo's ``API.Authorizations``), pass
``authorization="Bearer <secret>"`` or ``"Basic <base64>"``. Replication is then
Kubo's business (pinning services, IPFS Cluster); ``replicas``/``write_quorum``
do not apply.

HTTP runs in worker threads with the standard library's ``urllib``; calls are
``async`` like the rest of the client API.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from core import cid as cidmod

from agents.storage.errors import BadRequest, CidMismatch, CorruptBlob, NotFound, StorageError, StorageUnavailable

ADD_PARAMS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "chunker": f"size-{cidmod.CHUNK_SIZE}",
    "hash": "sha2-256",
    "pin": "true",
    "quieter": "true",
}
_PIECE = 1 << 20


class KuboClient:
    """put / get / pin / unpin against a Kubo node's RPC API at ``api_url``."""

    def __init__(
        self,
        api_url: str = "http://127.0.0.1:5001",
        *,
        timeout: float = 60.0,
        authorization: str | None = None,
        max_blob: int = 256 * 1024 * 1024,
    ):
        parsed = urllib.parse.urlsplit(api_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Kubo RPC API URL must be http(s)://host:port, not {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.max_blob = max_blob
        self._authorization = authorization

    # -- HTTP -------------------------------------------------------------

    def _request(
        self, command: str, params: dict[str, str], body: Any = None, headers: dict[str, str] | None = None
    ) -> bytes:
        url = f"{self.api_url}/api/v0/{command}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, data=body, method="POST", headers=dict(headers or {}))
        if self._authorization:
            req.add_header("Authorization", self._authorization)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out = bytearray()
                while piece := resp.read(_PIECE):
                    out += piece
                    if len(out) > self.max_blob + 4096:
                        raise BadRequest(f"Kubo answered more than max_blob ({self.max_blob}) bytes")
                return bytes(out)
        except urllib.error.HTTPError as exc:
            message = _kubo_error(exc)
            if "not found" in message.lower() or "no link named" in message.lower():
                raise NotFound(f"Kubo {command}: {message}") from None
            raise StorageError(f"Kubo {command} failed (HTTP {exc.code}): {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise StorageUnavailable(f"Kubo RPC API at {self.api_url} unreachable: {exc}") from None

    async def _call(self, command: str, params: dict[str, str], body: Any = None, headers=None) -> bytes:
        return await trio.to_thread.run_sync(self._request, command, params, body, headers)

    # -- API --------------------------------------------------------------

    async def put(self, data: bytes, *, pin: bool = True) -> str:
        """``ipfs add`` with emrshare's CID settings; returns the CID after checking it."""
        data = bytes(data)
        if len(data) > self.max_blob:
            raise BadRequest(f"blob of {len(data)} bytes exceeds max_blob {self.max_blob}")
        expected = await trio.to_thread.run_sync(cidmod.compute, data)
        return await self._add(iter([data]), len(data), expected, pin)

    async def put_file(self, path: str | Path, *, pin: bool = True) -> str:
        """Like :meth:`put` for a file, streamed (bounded memory)."""
        path = Path(path)

        def digest() -> tuple[str, int]:
            builder = cidmod.CidBuilder()
            with open(path, "rb") as f:
                while piece := f.read(4 << 20):
                    builder.update(piece)
            return builder.finish(), builder.size

        expected, size = await trio.to_thread.run_sync(digest)

        def pieces() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while piece := f.read(_PIECE):
                    yield piece

        return await self._add(pieces(), size, expected, pin)

    async def _add(self, pieces: Iterator[bytes], size: int, expected: str, pin: bool) -> str:
        boundary = "emrshare-" + secrets.token_hex(12)
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="blob"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            yield from pieces
            yield tail

        params = dict(ADD_PARAMS, pin="true" if pin else "false")
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        raw = await self._call("add", params, body(), headers)
        try:
            lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            got = lines[-1]["Hash"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise StorageError(f"Kubo add: unexpected answer {raw[:200]!r}") from None
        if got != expected:
            raise CidMismatch(
                f"Kubo stored the blob as {got}, emrshare computes {expected}: check the node's "
                "Import settings (chunker, raw leaves, CID version, max links)"
            )
        return got

    async def get(self, cid: str) -> bytes:
        """``ipfs cat``, verified against the CID."""
        canonical = str(cidmod.parse(cid))
        data = await self._call("cat", {"arg": canonical})
        ok = await trio.to_thread.run_sync(cidmod.is_valid, canonical, data)
        if not ok:
            raise CorruptBlob(f"Kubo returned bytes that do not hash to {canonical}")
        return data

    async def pin(self, cid: str) -> None:
        await self._call("pin/add", {"arg": str(cidmod.parse(cid))})

    async def unpin(self, cid: str) -> None:
        await self._call("pin/rm", {"arg": str(cidmod.parse(cid))})


def _kubo_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(4096)
        return str(json.loads(body).get("Message", ""))[:500] or body.decode(errors="replace")[:500]
    except (ValueError, OSError, AttributeError):
        return str(exc.reason)
