"""bus: typed, authenticated messages between agents, over trio and msgpack.

The bus knows nothing of the domain: message bodies are opaque msgpack values,
and signing, the key directory and signature verification are injected
callables (the agents pass core's ECDSA). It does not import core/ or agents/.

Channels
========
By default every connection is an authenticated encrypted channel
(:mod:`bus.channel`): an ephemeral X25519 handshake, then each side proves the
agents it speaks for once, with each agent's own signing key over the
channel's transcript (the connecting side first: a listening node proves its
agents only to a client that proved one it knows), and every later frame is AES-256-GCM with
per-direction counters (no replay, reorder or change goes unnoticed).
Envelopes on a channel are compact and unsigned (see below); a receiver
accepts one only from an agent the other side proved under the key its
directory holds. Envelopes between agents of one node are delivered with no
crypto at all. ``open_node(channels=False)`` keeps the older signed mode
(every envelope signed and verified, in the clear) for comparison; nodes of
the two modes do not talk to each other.

Wire format
===========

Frame (stream transports: TCP, TLS)
    ``length (4 bytes, unsigned big-endian) || payload (length bytes)``.
    On a channel the two first frames are the hellos and every later payload
    is a sealed channel frame (type byte, ciphertext, tag) holding an encoded
    envelope or an identity proof; in signed mode the payload is one encoded
    envelope. Frames above the configured maximum
    (default 16 MiB) are refused as soon as their header is read, and the
    connection is closed. The in-memory transport carries payloads without
    the header, under the same limit.

Envelope (the payload)
    Forms told apart by their length. On a channel and between agents of one
    node, the compact form (version 2, :func:`encode_compact`): requests,
    fire-and-forget messages and events are a msgpack array of exactly 8
    elements ``[2, type, kind, msg_id, nil, sender, recipient, body]``, where
    ``msg_id`` is an unsigned 64-bit int from one counter per node (unique while
    the node runs, so ids need not be unpredictable) and ``kind`` a str or, on a
    request or fire-and-forget message of a kind the application registered a
    code for (:func:`register_kind_codes`, append-only), that code (an int in
    0..:data:`MAX_KIND_CODE`; an event's registered topic too, and a topic
    family ``<prefix>/`` stands for ``<prefix>/<the event's recipient>``; a code
    nobody registered is read as the kind ``bus.code.<n>``, which no handler has:
    refused ``unknown-kind``). On a channel the node writes ``sender`` and
    ``recipient`` as their aliases there (small ints the proofs gave,
    :mod:`bus.channel`), and the receiving node reads them back to the names
    before any endpoint sees the envelope. Replies and error replies are an array of exactly
    4 elements ``[2, type, correlation_id, body]`` (:func:`encode_compact_reply`),
    ``correlation_id`` the request's ``msg_id``: no kind, id, sender or
    recipient. The requesting node hands a reply to the endpoint whose pending
    request has that id (:attr:`Node.reply_routes`); the endpoint takes it only
    if it arrived on the connection the request left on (a channel whose other
    side proved the agent asked) or, for a request delivered on the node itself,
    from the agent asked; anything else is refused ``unexpected-reply``. A
    channel also accepts the full form unsigned (answered in the same form). In
    signed mode the full form (version 1), a msgpack array of exactly 11
    elements, in this order:

    ====  ==============  =======================================================
     #    field           type and meaning
    ====  ==============  =======================================================
     0    version         int, ``1`` (:data:`PROTOCOL_VERSION`)
     1    type            int: 0 send (fire-and-forget), 1 request, 2 reply,
                          3 error reply, 4 event (publish/subscribe)
     2    kind            str, 1..128 chars: the agent-defined message kind; a
                          reply repeats its request's kind; an event's kind is
                          its topic; kinds starting with ``bus.`` are the bus's
                          own (``bus.subscribe``, ``bus.unsubscribe``,
                          ``bus.dropped``)
     3    msg_id          bin, 16 bytes: a random prefix per endpoint and a counter
     4    correlation_id  nil, or (replies and error replies only) bin 16: the
                          msg_id of the request answered
     5    sender          str, 1..256 chars: the sender's agent id
     6    recipient       str, 1..256 chars: the recipient's agent id
     7    timestamp       int, milliseconds since the Unix epoch (sender's clock)
     8    nonce           bin: in signed mode 16 random bytes (OS CSPRNG), for
                          the replay cache; empty in a full-form envelope on a
                          channel (its counters stop replays)
     9    body            any msgpack value without extension types; map keys
                          str or bin. Error replies: ``{"code": str,
                          "message": str}``; events: ``{"seq": int, "data":
                          value}``; subscribe: ``{"topic": str}``
    10    signature       bin, 0..512 bytes: empty on a channel; in signed mode
                          the 64-byte ECDSA r||s with core's signer
    ====  ==============  =======================================================

Signature input
    ``b"emrshare/v1/envelope\\x00" || msgpack([fields 0..9])``, the fields
    encoded as msgpack-python's packer does with ``use_bin_type=True``
    (minimal-width integers, str for text, bin for bytes, maps in order,
    float64). Receivers verify over the re-encoding of the decoded fields, so
    the signature binds exactly the values handlers see. With core's
    ``sign_raw`` the signed digest is SHA-256 of this input. Bodies must use
    str or bin map keys (receivers refuse other keys as malformed).

Acceptance
    On a channel, a receiver accepts an envelope only if it is addressed to it
    and its sender is an agent the other side proved on that channel under the
    key the receiver's directory holds (else ``unknown-sender`` or
    ``unproven-sender``; on an incoming channel whose other side proved no
    agent the node knows, no endpoint sees it and no error reply goes back).
    In signed mode it accepts one only if it is addressed
    to it, its timestamp
    is within the skew window (default 30 s) of the receiver's clock, the
    sender's public key is in the directory and the signature verifies, and
    the (sender, nonce) pair was not seen within the window. Otherwise it is
    dropped with a logged reason (:data:`REJECT_REASONS`) and, if it was a
    request, answered with an error reply whose code is that reason.

Entry points: :func:`open_node` (a :class:`Node` with listeners, routes and
connections), :meth:`Node.endpoint` (one agent's :class:`Endpoint`:
``request``, ``send``, ``publish``, ``subscribe``, ``register``,
``statistics``), the sans-I/O :class:`FrameDecoder`,
:func:`check_structure` and :func:`decode_envelope`/:func:`verify_envelope`.

Limits
    Every resource a client can hold is bounded: the ``DEFAULT_*`` constants of
    :mod:`bus.limits` (connections in all and per remote address, each
    connection's send queue and write timeout, handshake, idle and
    partial-frame timeouts, msgpack objects and depth per envelope), each
    overridable by the :func:`open_node` option of the same name in lower case
    without ``DEFAULT_``.
"""

from ._endpoint import DEFER as DEFER
from ._endpoint import Endpoint as Endpoint
from ._endpoint import FastHandler as FastHandler
from ._endpoint import Handler as Handler
from ._endpoint import Message as Message
from ._endpoint import defer as defer
from ._pubsub import Event as Event
from ._pubsub import Subscription as Subscription
from ._stats import EndpointStatistics as EndpointStatistics
from ._stats import NodeStatistics as NodeStatistics
from ._stats import Traffic as Traffic
from ._secure import THREAD_SEAL_BYTES as THREAD_SEAL_BYTES
from ._secure import ChannelConnection as ChannelConnection
from ._secure import channel_handshake as channel_handshake
from .channel import CHANNEL_OVERHEAD as CHANNEL_OVERHEAD
from .channel import MAX_CLAIMS as MAX_CLAIMS
from .channel import MAX_PROVED_AT_HANDSHAKE as MAX_PROVED_AT_HANDSHAKE
from .channel import Channel as Channel
from .channel import ChannelError as ChannelError
from .channel import Handshake as Handshake
from .directory import StaticDirectory as StaticDirectory
from .envelope import ID_SIZE as ID_SIZE
from .envelope import MAX_AGENT_ID_LENGTH as MAX_AGENT_ID_LENGTH
from .envelope import MAX_KIND_LENGTH as MAX_KIND_LENGTH
from .envelope import MAX_SIGNATURE_SIZE as MAX_SIGNATURE_SIZE
from .envelope import NONCE_SIZE as NONCE_SIZE
from .envelope import PROTOCOL_VERSION as PROTOCOL_VERSION
from .envelope import REJECT_REASONS as REJECT_REASONS
from .envelope import SIGNING_DOMAIN as SIGNING_DOMAIN
from .envelope import Directory as Directory
from .envelope import Envelope as Envelope
from .envelope import MessageType as MessageType
from .envelope import ReplayGuard as ReplayGuard
from .envelope import Signer as Signer
from .envelope import Verifier as Verifier
from .envelope import decode_envelope as decode_envelope
from .envelope import sign_wire as sign_wire
from .envelope import encode_compact as encode_compact
from .envelope import encode_compact_reply as encode_compact_reply
from .envelope import COMPACT_VERSION as COMPACT_VERSION
from .envelope import MAX_KIND_CODE as MAX_KIND_CODE
from .envelope import register_kind_codes as register_kind_codes
from .envelope import kind_codes as kind_codes
from .envelope import verify_envelope as verify_envelope
from .errors import BrokenError as BrokenError
from .errors import BusError as BusError
from .errors import ClosedError as ClosedError
from .errors import DeliveryError as DeliveryError
from .errors import EnvelopeError as EnvelopeError
from .errors import FrameError as FrameError
from .errors import HandlerError as HandlerError
from .errors import RemoteError as RemoteError
from .errors import RequestTimeout as RequestTimeout
from .errors import SubscriptionLagged as SubscriptionLagged
from .errors import UnreachableError as UnreachableError
from .framing import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from .framing import FRAME_HEADER_SIZE as FRAME_HEADER_SIZE
from .framing import FrameDecoder as FrameDecoder
from .framing import encode_frame as encode_frame
from .limits import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from .limits import DEFAULT_MAX_CONNECTIONS_PER_SOURCE as DEFAULT_MAX_CONNECTIONS_PER_SOURCE
from .limits import DEFAULT_HANDSHAKES_PER_SOURCE as DEFAULT_HANDSHAKES_PER_SOURCE
from .limits import DEFAULT_SEND_QUEUE_FRAMES as DEFAULT_SEND_QUEUE_FRAMES
from .limits import DEFAULT_SEND_QUEUE_BYTES as DEFAULT_SEND_QUEUE_BYTES
from .limits import DEFAULT_WRITE_TIMEOUT as DEFAULT_WRITE_TIMEOUT
from .limits import DEFAULT_HANDSHAKE_TIMEOUT as DEFAULT_HANDSHAKE_TIMEOUT
from .limits import DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT
from .limits import DEFAULT_FRAME_TIMEOUT as DEFAULT_FRAME_TIMEOUT
from .limits import DEFAULT_MAX_OBJECTS as DEFAULT_MAX_OBJECTS
from .limits import DEFAULT_MAX_DEPTH as DEFAULT_MAX_DEPTH
from .limits import DEFAULT_THREAD_DECODE_OBJECTS as DEFAULT_THREAD_DECODE_OBJECTS
from .limits import MAX_PROOF_FAILURES as MAX_PROOF_FAILURES
from .limits import LOGGED_REPEATS as LOGGED_REPEATS
from .structure import StructureError as StructureError
from .structure import TooManyObjects as TooManyObjects
from .structure import check_structure as check_structure
from .node import Node as Node
from .node import open_node as open_node
from .transport import Address as Address
from .transport import Connection as Connection
from .transport import MemoryTransport as MemoryTransport
from .transport import TcpTransport as TcpTransport
from .transport import Transport as Transport
from .transport import parse_address as parse_address
