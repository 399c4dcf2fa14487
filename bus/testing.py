"""Test kit: keyrings that give endpoints a signer, a directory and a verifier.

:class:`Keyring` takes the signature scheme as callables (tests pass core's
ECDSA: ``generate_private_key``, ``public_key``, ``sign_raw``,
``is_valid_raw``). Without them it falls back to HMAC-SHA256 keyed by a random
secret that doubles as the "public key": fast and deterministic for bus-only
tests, and NOT a signature scheme (anyone holding the directory can forge).
Never use the fallback outside tests.
"""

from __future__ import annotations

__all__ = ["Keyring"]

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from .directory import StaticDirectory
from .envelope import Signer


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
