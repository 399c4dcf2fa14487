"""Test kit: keyrings that give endpoints a signer, a directory and a verifier,
:func:`linked_pair`, two nodes talking over loopback TCP, and
:func:`eventually`, which waits for a condition the test cannot await.

:class:`Keyring` takes the signature scheme as callables (tests pass core's
ECDSA: ``generate_private_key``, ``public_key``, ``sign_raw``,
``is_valid_raw``). Without them it falls back to HMAC-SHA256 keyed by a random
secret that doubles as the "public key": fast and deterministic for bus-only
tests, and NOT a signature scheme (anyone holding the directory can forge).
Never use the fallback outside tests.
"""

from __future__ import annotations

__all__ = ["Keyring", "connect_channel", "eventually", "linked_pair"]

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from ._secure import ChannelConnection, channel_handshake
from .channel import CHANNEL_OVERHEAD
from .directory import StaticDirectory
from .envelope import Signer
from .framing import DEFAULT_MAX_FRAME_SIZE
from .transport import TcpTransport, parse_address


def _hmac_sign(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _hmac_verify(key: bytes, message: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(_hmac_sign(key, message), signature)


class Keyring:
    """Keys for a set of test agents and a shared :class:`StaticDirectory`."""

    def __init__(
        self,
        *,
        generate: Callable[[], bytes] | None = None,
        public_key: Callable[[bytes], bytes] | None = None,
        sign: Callable[[bytes, bytes], bytes] | None = None,
        verify: Callable[[bytes, bytes, bytes], bool] | None = None,
    ):
        schemes = (generate, public_key, sign, verify)
        if any(s is None for s in schemes) and not all(s is None for s in schemes):
            raise ValueError("pass all of generate, public_key, sign, verify, or none")
        self._generate = generate or (lambda: secrets.token_bytes(32))
        self._public = public_key or (lambda private: private)
        self._sign = sign or _hmac_sign
        self.verifier: Callable[[bytes, bytes, bytes], bool] = verify or _hmac_verify
        self.directory = StaticDirectory()
        self._private: dict[str, bytes] = {}

    def add(self, agent: str) -> Signer:
        """Create (or reuse) ``agent``'s keys; register its public key."""
        if agent not in self._private:
            private = self._generate()
            self._private[agent] = private
            self.directory.register(agent, self._public(private))
        return self.signer(agent)

    def signer(self, agent: str) -> Signer:
        private = self._private[agent]
        sign = self._sign
        return lambda message: sign(private, message)

    def credentials(self, agent: str) -> dict[str, Any]:
        """Keyword arguments for :meth:`Node.endpoint`: signer, directory, verifier."""
        return {"signer": self.add(agent), "directory": self.directory, "verifier": self.verifier}


@contextlib.asynccontextmanager
async def linked_pair(ring: Keyring, handler: Callable[[Any], Any] | None, *,
                      server_options: dict[str, Any] | None = None, client_options: dict[str, Any] | None = None,
                      client_address: str | None = None) -> AsyncIterator[tuple[Any, Any, Any, str]]:
    """Two nodes on loopback TCP: agent "bob" on the server node answers ``ping``
    with ``handler`` (None: no bob; the caller adds its own endpoints to the server
    node); agent "alice" on the client node is routed to it. Yields
    ``(server, client, alice, address)``; ``*_options`` go to :func:`open_node`
    (e.g. ``transports`` for TLS); ``client_address``: the local address the
    client node connects from (e.g. 127.0.0.2, apart from an attacker on 127.0.0.1)."""
    from .node import open_node

    client_options = dict(client_options or {})
    if client_address is not None:
        client_options["transports"] = {"tcp": TcpTransport(local_address=client_address)}
    async with open_node(**(server_options or {})) as server, open_node(**client_options) as client:
        address = await server.listen("tcp://127.0.0.1:0")
        client.add_route("bob", address)
        if handler is not None:
            server.endpoint("bob", **ring.credentials("bob")).register("ping", handler)
        yield server, client, client.endpoint("alice", **ring.credentials("alice")), address


async def eventually(predicate: Callable[[], bool], timeout: float = 5) -> None:
    """Poll ``predicate`` every few milliseconds until it holds; ``trio.TooSlowError``
    after ``timeout`` seconds (of the test's clock)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def connect_channel(address: str, *, prove: dict[str, Signer] | None = None,
                          max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> ChannelConnection:
    """A bare channel to the node at ``address`` (TCP), for tests that play a
    client by hand: it has done the handshake and proved each agent of
    ``prove`` (agent id -> signer); ``send`` carries raw envelope bytes, and
    ``send_proof(conn.channel.make_proof(agent, signer))`` proves more."""
    conn = await TcpTransport(max_frame_size=max_frame_size + CHANNEL_OVERHEAD).connect(parse_address(address))
    try:
        channel_conn = await channel_handshake(conn, initiator=True)
    except BaseException:
        await conn.aclose()
        raise
    for agent, signer in (prove or {}).items():
        await channel_conn.send_proof(channel_conn.channel.make_proof(agent, signer))
    return channel_conn
