"""Authenticated encrypted channels between two nodes (sans-I/O).

A link between two nodes is set up once with an ephemeral X25519 exchange and
then authenticated, per agent, by identity proofs: each side proves every
agent it speaks for with that agent's own signing key (the key the directory
holds for it: a certificate on the ledger, a genesis entry, or the key an
``enroll:`` id names), over the channel's transcript. After that, every frame
is encrypted and authenticated with AES-256-GCM under a per-direction key
and a counter nonce, so a frame cannot be read, changed, dropped from the
middle, reordered or replayed without the receiver noticing (the connection is
closed). Envelopes on a channel carry no signature of their own.

Handshake (two frames, each one msgpack array)::

    initiator -> responder   HELLO_I = ["emrshare/channel", 2, e_i]   (e_i: 32-byte X25519 public key)
    responder -> initiator   HELLO_R = ["emrshare/channel", 2, e_r]

    h       = SHA-256(TRANSCRIPT_DOMAIN || u32(len HELLO_I) || HELLO_I || HELLO_R)
    shared  = X25519(own ephemeral secret, other's e)        (all-zero output refused)
    k_i2r || k_r2i = HKDF-SHA256(ikm=shared, salt=h, info=KEY_INFO, length=64)

AES-256-GCM is OpenSSL's, through the ``cryptography`` package: with AES
instructions it seals a MiB in about a tenth of the time libsodium's
ChaCha20-Poly1305 takes here (``emrshare bench storage`` shows the data path
it is on), and counter nonces never repeat under one key.

Frames after the handshake: ``type (1 byte) || AES-256-GCM(key,
nonce = u64le(counter) || 4 zero bytes, plaintext, ad = type)``; each direction
has its own key and counter, starting at 0. Types: :data:`ENVELOPE` (an
envelope's wire bytes, signature field empty), :data:`WANT` (an agent id, UTF-8:
"prove this agent if you host it") and :data:`PROOF` (msgpack
``[agent_id, signature]``).

An identity proof is ``signature = sign_agent(PROOF_DOMAIN || h || role ||
agent_id)`` where ``role`` is ``b"i"`` when the initiator makes it and ``b"r"``
when the responder does. ``h`` covers both ephemeral keys, so a proof is good
on this channel only; the role byte keeps a proof from being reflected back as
the other side's. Proofs travel encrypted, so an active attacker who relays
the hellos cannot swap a proof for its own (it has no key), and one who runs
its own handshake with each side gets two different ``h``: the SIGMA pattern
(sign the transcript, protect identities under the session key).

Aliases: the side that proves an agent gives it an alias, a small int (0, 1, 2, ...
in the order it first proves agents on the channel; at most :data:`MAX_CLAIMS`),
sent in the proof. A compact envelope on the channel may then carry, in place of a
name, the alias of its sender (in the sending side's aliases) or of its recipient
(in the receiving side's): a request's two names cost two bytes instead of ~20.
An alias means exactly the name it stands for: the receiver reads it back to the
name before anything looks at the envelope, so who may send as whom is what the
proofs and the endpoints' checks say, as with names. A proof that gives an alias
another agent already has, or an agent another alias, breaks the channel; an
envelope naming an alias the channel never gave is malformed (the connection
closes).

This module keeps the handshake and frame state; :mod:`bus._secure` runs it
over a connection and the node and endpoints decide who may send what. It
imports nothing from the domain: the signer and verifier come in as callables.
"""

from __future__ import annotations

__all__ = ["CHANNEL_OVERHEAD", "MAX_CLAIMS", "MAX_PROVED_AT_HANDSHAKE", "ChannelError", "Handshake", "Channel"]

import hashlib
import hmac
import struct
from collections.abc import Callable

import msgpack
import nacl.bindings as sodium
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.public import PrivateKey

from .errors import BusError

CHANNEL_PROTOCOL = "emrshare/channel"
CHANNEL_VERSION = 4
"""2: envelopes after the handshake are compact (:func:`bus.envelope.encode_compact`);
3: compact replies name no kind, id, sender or recipient, and requests may carry kind
codes (:func:`bus.envelope.register_kind_codes`); 4: a proof gives its agent a short
alias on the channel, and a compact envelope may name its sender and recipient by
their aliases (see "Aliases" above). A node of another channel version refuses the
hello instead of misreading them."""
TRANSCRIPT_DOMAIN = b"emrshare/v1/channel/transcript\x00"
KEY_INFO = b"emrshare/v1/channel/keys"
PROOF_DOMAIN = b"emrshare/v1/channel/identity\x00"
ENVELOPE = 0
PROOF = 1
WANT = 2
_TYPES = (bytes([ENVELOPE]), bytes([PROOF]), bytes([WANT]))
_TAG_SIZE = 16  # the GCM tag
CHANNEL_OVERHEAD = 1 + _TAG_SIZE
"""Bytes a channel frame adds to its payload (type byte and Poly1305 tag)."""
MAX_HELLO_SIZE = 64
"""A hello is 38 bytes; anything longer is refused before it is parsed."""
MAX_CLAIMS = 256
"""Agents one side of a channel may prove (a node hosting more is refused)."""
MAX_PROOF_SIZE = 1024
MAX_PROVED_AT_HANDSHAKE = 8
"""A listening node hosting at most this many agents proves them all on an incoming
channel once the other side proved an agent the node knows (a signature each, so
nothing before that: :class:`bus.Node`); one hosting more proves each when the
other side asks (WANT)."""
MAX_AGENT_ID_BYTES = 1024
_MAX_COUNTER = 2**64 - 1
_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")  # cryptography >= 45
_SEAL_INTO_BYTES = 64 * 1024
"""Frames from this size are sealed into one buffer with the type byte (a copy of a
large frame saved); smaller ones as ``type + ciphertext`` (bytes)."""
_ZERO_DH = bytes(32)
_NONCE = struct.Struct("<Q4x")
_HEAD = struct.Struct(">IB")
"""A framed small frame's first 5 bytes: the transport's length prefix and the type byte."""


class ChannelError(BusError):
    """A handshake or frame that does not check out; the connection must close."""


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _hello(public: bytes) -> bytes:
    return msgpack.packb([CHANNEL_PROTOCOL, CHANNEL_VERSION, public], use_bin_type=True)


def _parse_hello(data: bytes) -> bytes:
    """The peer's ephemeral public key from its hello (ChannelError otherwise)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_HELLO_SIZE:
        raise ChannelError("handshake: the first frame is not a channel hello")
    try:
        fields = msgpack.unpackb(bytes(data), raw=False, max_array_len=3, max_map_len=0, max_ext_len=0,
                                 max_str_len=32, max_bin_len=32)
    except Exception:
        raise ChannelError("handshake: the first frame is not a channel hello") from None
    if type(fields) is not list or len(fields) != 3 or fields[0] != CHANNEL_PROTOCOL:
        raise ChannelError("handshake: the first frame is not a channel hello")
    if fields[1] != CHANNEL_VERSION or type(fields[1]) is not int:
        raise ChannelError(f"handshake: unsupported channel version {fields[1]!r}")
    public = fields[2]
    if type(public) is not bytes or len(public) != 32:
        raise ChannelError("handshake: the ephemeral key must be 32 bytes")
    return public


def is_channel_hello(data: bytes) -> bool:
    """Whether ``data`` is a channel hello (a signed-mode node tells a channel
    client from garbage with it)."""
    try:
        _parse_hello(data)
    except ChannelError:
        return False
    return True


class Handshake:
    """One side's handshake: make our hello, take theirs, get the :class:`Channel`.

    ``ephemeral`` (32 bytes) is for tests only; by default a fresh X25519 key
    from the OS's randomness (libsodium) is drawn and forgotten with the object.
    """

    def __init__(self, *, initiator: bool, ephemeral: bytes | None = None):
        self.initiator = initiator
        self._secret = PrivateKey(ephemeral) if ephemeral is not None else PrivateKey.generate()
        self.hello = _hello(bytes(self._secret.public_key))

    def finish(self, their_hello: bytes) -> "Channel":
        """Derive the channel from the other side's hello (ChannelError if it is not one)."""
        theirs = _parse_hello(their_hello)
        try:
            shared = sodium.crypto_scalarmult(bytes(self._secret), theirs)
        except Exception:
            raise ChannelError("handshake: bad ephemeral key") from None
        if hmac.compare_digest(shared, _ZERO_DH):
            raise ChannelError("handshake: low-order ephemeral key")
        hello_i, hello_r = (self.hello, bytes(their_hello)) if self.initiator else (bytes(their_hello), self.hello)
        transcript = hashlib.sha256(
            TRANSCRIPT_DOMAIN + struct.pack(">I", len(hello_i)) + hello_i + hello_r
        ).digest()
        keys = _hkdf(shared, transcript, KEY_INFO, 64)
        i2r, r2i = keys[:32], keys[32:]
        send, receive = (i2r, r2i) if self.initiator else (r2i, i2r)
        return Channel(transcript, self.initiator, send, receive)


Signer = Callable[[bytes], bytes]
Verifier = Callable[[bytes, bytes, bytes], bool]


class Channel:
    """An established channel: frame sealing and opening with counters, identity
    proofs made and checked.

    ``binding`` is the transcript hash ``h``. ``claims`` maps each agent id the
    other side proved to its proof signature (not yet checked: who an agent is
    depends on the directory of the endpoint that receives, see
    :meth:`claim_ok`); ``proven_here`` holds the agents we have proved to it.
    """

    __slots__ = ("binding", "initiator", "_send_aead", "_receive_aead", "_send_counter", "_receive_counter",
                 "claims", "proven_here", "aliases_here", "own_names", "their_aliases", "their_names",
                 "_verified", "_refused", "failed_proofs", "admit")

    def __init__(self, binding: bytes, initiator: bool, send_key: bytes, receive_key: bytes):
        self.binding = binding
        self.initiator = initiator
        self._send_aead = AESGCM(send_key)
        self._receive_aead = AESGCM(receive_key)
        self._send_counter = 0
        self._receive_counter = 0
        self.claims: dict[str, bytes] = {}
        self.proven_here: set[str] = set()
        self.aliases_here: dict[str, int] = {}
        """Our agents' aliases on this channel (given in our proofs)."""
        self.own_names: dict[int, str] = {}
        """Alias -> our agent: how an envelope received here names its recipient by alias."""
        self.their_aliases: dict[str, int] = {}
        """The other side's agents' aliases (from its proofs; the proof may not verify:
        the endpoints check it under the name, as for a name)."""
        self.their_names: dict[int, str] = {}
        """Alias -> the other side's agent: how an envelope received here names its sender."""
        self._verified: dict[str, bytes] = {}  # agent -> the key its proof verified under
        self._refused: dict[str, tuple[bytes, bytes]] = {}  # agent -> (key, proof) refused: not checked again
        self.failed_proofs = 0
        """Proofs that did not verify (each cost a verification; the node drops a
        channel with too many: ``bus.limits.MAX_PROOF_FAILURES``)."""
        self.admit: Callable[[str], bool] | None = None
        """Set by the node: whether an agent proved here may speak on this connection at
        all (e.g. the TLS certificate under the channel must name it); None: any."""

    # ------------------------------------------------------------ frames

    _nonce = staticmethod(_NONCE.pack)
    """The 12-byte nonce of a frame counter: u64le(counter) || 4 zero bytes."""

    def seal(self, frame_type: int, payload: bytes, *, framed: bool = False) -> bytes | bytearray:
        """The next outgoing frame carrying ``payload`` (call in send order); a large
        one as a bytearray (written once by the cipher, not copied after it).
        ``framed``: preceded by the 4-byte big-endian length of the rest, the
        header of a transport frame (:mod:`bus.framing`), so a byte stream writes
        the result as it is, with no copy to put a header in front."""
        if self._send_counter >= _MAX_COUNTER:
            raise ChannelError("channel exhausted its nonces; reconnect")
        kind = _TYPES[frame_type]
        nonce = _NONCE.pack(self._send_counter)
        if _ENCRYPT_INTO and len(payload) >= _SEAL_INTO_BYTES:  # the type byte and the ciphertext in one buffer
            start = 4 if framed else 0
            frame = bytearray(start + 1 + len(payload) + _TAG_SIZE)
            if framed:
                frame[:4] = (len(frame) - 4).to_bytes(4, "big")
            frame[start] = kind[0]
            self._send_aead.encrypt_into(nonce, payload, kind, memoryview(frame)[start + 1:])
        elif framed:
            frame = _HEAD.pack(len(payload) + CHANNEL_OVERHEAD, frame_type) + self._send_aead.encrypt(nonce, payload,
                                                                                                   kind)
        else:
            frame = kind + self._send_aead.encrypt(nonce, payload, kind)
        self._send_counter += 1
        return frame

    def open(self, frame: bytes | bytearray) -> tuple[int, bytes | bytearray]:
        """(type, payload) of the next incoming frame; ChannelError when it was
        forged, changed, replayed, reordered or is not a channel frame. A large frame
        (from 64 KiB) that is a bytearray is decrypted in place and becomes the
        payload (a bytearray: give only a frame nobody else holds); its bytes are
        garbage once it failed authentication."""
        size = len(frame)
        if size < CHANNEL_OVERHEAD:
            raise ChannelError("not a channel frame")
        frame_type = frame[0]
        if frame_type > WANT:  # (the types are 0, 1, 2)
            raise ChannelError("not a channel frame")
        nonce = _NONCE.pack(self._receive_counter)
        try:
            if size < _SEAL_INTO_BYTES:  # (the ciphertext sliced out: cheaper than a view for the cipher)
                payload = self._receive_aead.decrypt(nonce, frame[1:], _TYPES[frame_type])
            elif _ENCRYPT_INTO and type(frame) is bytearray:
                # decrypted where it is (the plaintext over the ciphertext, then the type
                # byte and the tag cut off): no second buffer of the frame's size
                end = size - _TAG_SIZE
                with memoryview(frame) as view:
                    self._receive_aead.decrypt_into(nonce, view[1:], _TYPES[frame_type], view[1:end])
                del frame[end:]
                del frame[:1]  # (O(1): a bytearray drops its first bytes by moving its start)
                payload = frame
            else:
                payload = self._receive_aead.decrypt(nonce, memoryview(frame)[1:], _TYPES[frame_type])
        except InvalidTag:
            raise ChannelError("a frame failed authentication (forged, replayed or reordered)") from None
        self._receive_counter += 1
        return frame_type, payload

    # ------------------------------------------------------------ identities

    def _proof_message(self, agent: str, by_initiator: bool) -> bytes:
        return PROOF_DOMAIN + self.binding + (b"i" if by_initiator else b"r") + agent.encode()

    def make_proof(self, agent: str, sign: Signer) -> bytes:
        """The PROOF payload by which we prove ``agent`` (signed with its key)."""
        signature = sign(self._proof_message(agent, self.initiator))
        self.proven_here.add(agent)
        alias = self.aliases_here.get(agent)
        if alias is None:
            alias = self.aliases_here[agent] = len(self.aliases_here)
            self.own_names[alias] = agent
        return msgpack.packb([agent, signature, alias], use_bin_type=True)

    @staticmethod
    def wanted(payload: bytes) -> str:
        """The agent id a WANT payload names (ChannelError if it is not one)."""
        if not 0 < len(payload) <= MAX_AGENT_ID_BYTES:
            raise ChannelError("a WANT frame must name an agent")
        try:
            return payload.decode()
        except UnicodeDecodeError:
            raise ChannelError("a WANT frame must name an agent in UTF-8") from None

    def add_claim(self, payload: bytes) -> str:
        """Record a PROOF payload the other side sent; return the agent it names."""
        if len(payload) > MAX_PROOF_SIZE:
            raise ChannelError("identity proof too large")
        try:
            fields = msgpack.unpackb(payload, raw=False, max_array_len=3, max_map_len=0, max_ext_len=0)
        except Exception:
            raise ChannelError("identity proof is not [agent, signature, alias]") from None
        if (type(fields) is not list or not 2 <= len(fields) <= 3 or type(fields[0]) is not str or not fields[0]
                or type(fields[1]) is not bytes or not fields[1]):
            raise ChannelError("identity proof is not [agent, signature, alias]")
        agent, signature = fields[0], fields[1]
        alias = fields[2] if len(fields) == 3 else None
        if agent not in self.claims and len(self.claims) >= MAX_CLAIMS:
            raise ChannelError(f"more than {MAX_CLAIMS} identities proved on one channel")
        if alias is not None and (type(alias) is not int or not 0 <= alias < MAX_CLAIMS):
            raise ChannelError(f"an agent's alias must be an int in 0..{MAX_CLAIMS - 1}")
        if alias is not None:
            named = self.their_names.get(alias)
            given = self.their_aliases.get(agent)
            if (named is not None and named != agent) or (given is not None and given != alias):
                raise ChannelError("an identity proof gives an alias another agent has, or an agent a second alias")
            self.their_names[alias] = agent
            self.their_aliases[agent] = alias
        self.claims[agent] = signature
        # (an agent verified here stays so: every proof of it signs this channel's binding, so
        # a copy or another signature proves nothing new, and costs no verification again)
        return agent

    def proof_verifies(self, agent: str, key: bytes, verify: Verifier) -> bool:
        """Whether the other side's proof of ``agent`` verifies under ``key`` (the
        signature alone: no admission, nothing remembered; see :meth:`claim_ok`)."""
        signature = self.claims.get(agent)
        try:
            return signature is not None and verify(key, self._proof_message(agent, not self.initiator),
                                                    signature) is True
        except Exception:
            return False

    def claim_ok(self, agent: str, key: bytes | None, verify: Verifier) -> str | None:
        """Whether the other side proved ``agent`` under ``key`` (its key in the
        asking endpoint's directory): None when it did, else the reason
        (``unknown-sender``: no key; ``unproven-sender``: no proof, or one that
        does not verify under that key). Checked once per (agent, key), and a
        refused (agent, key, proof) is not checked again."""
        if key is None:
            return "unknown-sender"
        if self._verified.get(agent) == key:
            return None
        signature = self.claims.get(agent)
        if signature is None or self._refused.get(agent) == (key, signature):
            return "unproven-sender"
        try:
            ok = verify(key, self._proof_message(agent, not self.initiator), signature) is True
        except Exception:
            ok = False
        if not ok:
            self._refused[agent] = (key, signature)
            self.failed_proofs += 1
            return "unproven-sender"
        if self.admit is not None:
            try:
                admitted = self.admit(agent) is True
            except Exception:
                admitted = False
            if not admitted:
                self._refused[agent] = (key, signature)
                return "unproven-sender"
        self._verified[agent] = key
        return None
