"""KuboClient against a tiny fake Kubo RPC server on loopback that checks the requests."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio

from agents.storage import CidMismatch, CorruptBlob, NotFound, StorageError, Unavailable
from agents.storage.kubo import KuboClient
from core.cid import CHUNK_SIZE, compute


class FakeKubo:
    """Speaks the subset of /api/v0 the client uses; records every request."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.pins: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, list[str]], dict[str, str]]] = []
        self.lie = False
        self.tamper = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                fake.requests.append(("POST", url.path, query, dict(self.headers)))
                command = url.path.removeprefix("/api/v0/")
                if command == "add":
                    ctype = self.headers["Content-Type"]
                    assert ctype.startswith("multipart/form-data; boundary=")
                    boundary = ctype.split("boundary=", 1)[1].encode()
                    start = body.index(b"\r\n\r\n") + 4
                    end = body.rindex(b"\r\n--" + boundary + b"--")
                    data = body[start:end]
                    cid = compute(data)  # what a real Kubo with these settings prints
                    if fake.lie:
                        cid = compute(data + b"!")
                    fake.blobs[cid] = data
                    if query.get("pin") == ["true"]:
                        fake.pins.add(cid)
                    self._json({"Name": "blob", "Hash": cid, "Size": str(len(data))})
                elif command == "cat":
                    cid = query["arg"][0]
                    if cid not in fake.blobs:
                        self._error(500, f"block was not found locally (offline): ipld: could not find {cid}")
                        return
                    data = fake.blobs[cid]
                    if fake.tamper:
                        data = bytes([data[0] ^ 1]) + data[1:]
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif command == "pin/add":
                    fake.pins.add(query["arg"][0])
                    self._json({"Pins": query["arg"]})
                elif command == "pin/rm":
                    if query["arg"][0] not in fake.pins:
                        self._error(500, "not pinned or pinned indirectly")
                        return
                    fake.pins.discard(query["arg"][0])
                    self._json({"Pins": query["arg"]})
                else:
                    self._error(404, "404 page not found")

            def _json(self, obj):
                raw = json.dumps(obj).encode() + b"\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _error(self, code, message):
                raw = json.dumps({"Message": message, "Code": 0, "Type": "error"}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.mark.parametrize("size", [0, 11, CHUNK_SIZE + 1])
async def test_put_get_pin_round_trip(size) -> None:
    data = os.urandom(size)
    with FakeKubo() as fake, trio.fail_after(20):
        client = KuboClient(fake.url, authorization="Bearer s3cret")
        cid = await client.put(data)
        assert cid == compute(data) and fake.blobs[cid] == data and cid in fake.pins
        method, path, query, headers = fake.requests[0]
        assert path == "/api/v0/add"
        assert query["cid-version"] == ["1"] and query["raw-leaves"] == ["true"]
        assert query["chunker"] == ["size-262144"] and query["hash"] == ["sha2-256"]
        assert headers["Authorization"] == "Bearer s3cret"
        assert await client.get(cid) == data
        await client.unpin(cid)
        assert cid not in fake.pins
        await client.pin(cid)
        assert cid in fake.pins


async def test_put_file_streams(tmp_path) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 5)
    (tmp_path / "blob").write_bytes(data)
    with FakeKubo() as fake, trio.fail_after(20):
        cid = await KuboClient(fake.url).put_file(tmp_path / "blob")
        assert cid == compute(data) and fake.blobs[cid] == data


async def test_wrong_cid_from_node_is_rejected() -> None:
    with FakeKubo() as fake, trio.fail_after(20):
        fake.lie = True
        with pytest.raises(CidMismatch, match="Import settings"):
            await KuboClient(fake.url).put(b"record")


async def test_tampered_cat_is_never_returned() -> None:
    with FakeKubo() as fake, trio.fail_after(20):
        client = KuboClient(fake.url)
        cid = await client.put(b"ciphertext" * 100)
        fake.tamper = True
        with pytest.raises(CorruptBlob):
            await client.get(cid)


async def test_errors_are_clear() -> None:
    with FakeKubo() as fake, trio.fail_after(20):
        client = KuboClient(fake.url)
        with pytest.raises(NotFound):
            await client.get(compute(b"absent"))
        with pytest.raises(StorageError, match="not pinned"):
            await client.unpin(compute(b"absent"))
        url = fake.url
    with trio.fail_after(20):
        with pytest.raises(Unavailable):
            await KuboClient(url, timeout=2).put(b"x")
    with pytest.raises(ValueError):
        KuboClient("ftp://example")
