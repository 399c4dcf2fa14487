"""An agent's keys and the encrypted key store.

* :class:`AgentKeys`: an agent's three independent secrets — ECDSA (bus and
  ledger signatures), X25519 (sealed boxes), and the 32-byte PRE master secret
  (label keys; users only).
* :class:`KeyStore`: keys at rest, encrypted with XSalsa20-Poly1305 (pynacl
  SecretBox) under a key derived from a passphrase (Argon2id) or read from a
  32-byte key file. Written atomically (temp file, fsync, rename).
* :func:`read_passphrase_file`: the passphrase a passphrase file holds, read the
  same way by every command and node that takes one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey as BoxPrivateKey

from core import ecdsa, pre
from core.protocol import codes

from agents.errors import AgentError

__all__ = ["AgentKeys", "KeyStore", "KeyStoreError", "atomic_write", "read_passphrase_file"]


class KeyStoreError(AgentError, code=codes.KEY_STORE):
    """The key store cannot be opened (wrong passphrase or key file, corrupt file)."""


# ------------------------------------------------------------------ keys


@dataclass(frozen=True)
class AgentKeys:
    ecdsa_private: bytes = field(repr=False)
    box_private: bytes = field(repr=False)
    master: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> "AgentKeys":
        return cls(ecdsa.generate_private_key(), bytes(BoxPrivateKey.generate()), pre.new_master_secret())

    @functools.cached_property
    def ecdsa_public(self) -> bytes:
        return ecdsa.public_key(self.ecdsa_private)

    @functools.cached_property
    def box_public(self) -> bytes:
        return bytes(BoxPrivateKey(self.box_private).public_key)

    @functools.cached_property
    def receive(self) -> pre.KeyPair:
        """The PRE receiving key pair (label "receive")."""
        return pre.KeyPair.derive(self.master, pre.RECEIVE_LABEL)

    def label_key(self, label: str, epoch: int = 0) -> pre.KeyPair:
        """The PRE key pair of ``label`` at ``epoch`` (0: the original; a rotation moves on)."""
        return pre.KeyPair.derive(self.master, label, epoch)

    def sign(self, tag: str, message: bytes) -> bytes:
        return ecdsa.sign(self.ecdsa_private, tag, message)

    def to_bytes(self) -> bytes:
        return msgpack.packb({"ecdsa": self.ecdsa_private, "box": self.box_private, "master": self.master})

    @classmethod
    def from_bytes(cls, data: bytes) -> "AgentKeys":
        try:
            d = msgpack.unpackb(data)
            return cls(d["ecdsa"], d["box"], d["master"])
        except Exception as exc:
            raise KeyStoreError("key material is malformed") from exc


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, directory fsync."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_passphrase_file(path: Path) -> str:
    """The passphrase in the file ``path``: its text without the trailing line endings an
    editor or ``echo`` leaves (``\\n``, ``\\r``); every other character counts. KeyStoreError
    ("passphrase file P: <why>; <what to do>") when it does not read as text or is empty."""
    try:
        text = Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else "not text"
        raise KeyStoreError(f"passphrase file {path}: {why}; check the path") from None
    if not text:
        raise KeyStoreError(f"passphrase file {path} is empty; write the passphrase in it")
    return text


class KeyStore:
    """Secrets at rest in one file, encrypted under a passphrase or a key file.

    File layout (msgpack): ``{"v": 1, "kdf": "argon2id"|"keyfile", "salt": bin16,
    "ops": int, "mem": int, "box": SecretBox ciphertext of the payload}``.
    """

    def __init__(self, path: Path, *, passphrase: str | None = None, key_file: Path | None = None,
                 fast_kdf: bool = False):
        if (passphrase is None) == (key_file is None):
            raise ValueError("give exactly one of passphrase or key_file")
        self.path = Path(path)
        self._passphrase = passphrase
        self._key_file = Path(key_file) if key_file else None
        # fast_kdf: Argon2id's minimum cost, for tests and throwaway swarms only
        self._ops = nacl.pwhash.argon2id.OPSLIMIT_MIN if fast_kdf else nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
        self._mem = nacl.pwhash.argon2id.MEMLIMIT_MIN if fast_kdf else nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

    @staticmethod
    def create_key_file(path: Path) -> None:
        atomic_write(Path(path), secrets.token_bytes(32))

    def _key(self, salt: bytes, ops: int, mem: int) -> bytes:
        if self._key_file is not None:
            key = self._key_file.read_bytes()
            if len(key) != 32:
                raise KeyStoreError(f"key file {self._key_file} must hold exactly 32 bytes")
            return hmac.new(key, b"emrshare/v1/keystore" + salt, hashlib.sha256).digest()
        assert self._passphrase is not None
        return nacl.pwhash.argon2id.kdf(32, self._passphrase.encode(), salt, opslimit=ops, memlimit=mem)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, payload: bytes) -> None:
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        key = self._key(salt, self._ops, self._mem)
        box = nacl.secret.SecretBox(key).encrypt(payload)
        atomic_write(self.path, msgpack.packb({
            "v": 1, "kdf": "keyfile" if self._key_file else "argon2id", "salt": salt,
            "ops": self._ops, "mem": self._mem, "box": bytes(box),
        }))

    def load(self) -> bytes:
        try:
            d = msgpack.unpackb(self.path.read_bytes())
            salt, ops, mem, box = d["salt"], d["ops"], d["mem"], d["box"]
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise KeyStoreError(f"key store {self.path} is corrupt") from exc
        try:
            return nacl.secret.SecretBox(self._key(salt, ops, mem)).decrypt(box)
        except CryptoError as exc:
            raise KeyStoreError(f"key store {self.path}: wrong passphrase or key file") from exc
