"""The wire protocol: every message kind's body as a typed value, the signed formats,
the error codes, and the registry of kinds (docs/protocol.md is its reader's summary).

Pure like the rest of core/: no trio, no bus, no agents. Each kind has a request
type and a reply type (frozen, slotted dataclasses with a string ``kind``):
``to_wire()`` gives the msgpack body, ``from_wire(body)`` checks a received body
and raises :class:`core.errors.DecodeError` with a clear message for any wrong
type, missing field, size or range. Agents build and parse bodies only through
them.

* Message types, by server: ``orderer.*`` (:class:`OrdererSubmit`, ...),
  ``peer.*`` (:class:`PeerEnroll`, ...), ``patient.*``, ``storage.*``, and the
  topic payloads :class:`BlockEvent` (``blocks``), :class:`PeerEvent` (``events``) and
  :class:`CommitNotice` (``commits/<subject>``, :func:`commits_topic`).
* Views (:mod:`core.protocol._views`): what one reader needs of a ledger entry, for
  ``peer.query``'s ``view`` (:data:`QUERY_VIEWS`) and the commit notices
  (:data:`NOTICE_VIEWS`).
* :data:`KINDS`, :data:`TOPICS`: kind -> :class:`KindSpec` (request type, reply
  type, server, senders, code); topic -> :class:`TopicSpec`. :data:`KIND_CODES`:
  kind -> its code on the bus (append-only; :data:`RETIRED_KIND_CODES` are never
  given again), registered with the bus by ``agents.runtime``.
* The re-encryption reply's signature: :func:`make_reencrypt_reply`,
  :func:`verify_reencrypt_reply` (tag :data:`REENCRYPTION_TAG`), and the key
  shares' :func:`share_context`.
* :mod:`core.protocol.codes`: every error code that crosses the bus, and
  :class:`~core.protocol.codes.ErrorRegistry` (code -> typed exception).

Adding a kind: define its request and reply types in the module of its server
(``_peer.py``, ...), export them here, add a :class:`KindSpec` to
``_registry.py`` (with the next unused code), a handler in the serving agent, and a row to docs/protocol.md
(tests check that the registry, the agents' handlers and the document agree).
"""

from core.protocol._schema import Message as Message
from core.protocol._orderer import MAX_TXS_PER_SUBMIT as MAX_TXS_PER_SUBMIT
from core.protocol._orderer import MAX_BLOCKS_PER_REPLY as MAX_BLOCKS_PER_REPLY
from core.protocol._orderer import HASH_SIZE as HASH_SIZE
from core.protocol._orderer import OrdererSubmit as OrdererSubmit
from core.protocol._orderer import OrdererSubmitReply as OrdererSubmitReply
from core.protocol._orderer import OrdererBlocks as OrdererBlocks
from core.protocol._orderer import OrdererBlocksReply as OrdererBlocksReply
from core.protocol._orderer import OrdererHead as OrdererHead
from core.protocol._orderer import OrdererHeadReply as OrdererHeadReply
from core.protocol._orderer import BlockEvent as BlockEvent
from core.protocol._orderer import BlockRange as BlockRange
from core.protocol._orderer import BlockList as BlockList
from core.protocol._peer import MAX_SUBMIT_BYTES as MAX_SUBMIT_BYTES
from core.protocol._peer import MAX_SEALED_SHARE as MAX_SEALED_SHARE
from core.protocol._peer import MAX_ENTRIES as MAX_ENTRIES
from core.protocol._peer import MAX_CID_LENGTH as MAX_CID_LENGTH
from core.protocol._peer import BOX_KEY_SIZE as BOX_KEY_SIZE
from core.protocol._peer import TOKEN_SIZE as TOKEN_SIZE
from core.protocol._peer import QUERY_FIELDS as QUERY_FIELDS
from core.protocol._peer import EVENT_TYPES as EVENT_TYPES
from core.protocol._peer import PeerEnroll as PeerEnroll
from core.protocol._peer import PeerEnrollReply as PeerEnrollReply
from core.protocol._peer import PeerSubmit as PeerSubmit
from core.protocol._peer import SubmitResult as SubmitResult
from core.protocol._peer import PeerSubmitReply as PeerSubmitReply
from core.protocol._peer import PeerQuery as PeerQuery
from core.protocol._peer import PeerQueryReply as PeerQueryReply
from core.protocol._peer import PeerAudit as PeerAudit
from core.protocol._peer import PeerAuditReply as PeerAuditReply
from core.protocol._peer import PeerDeliverShare as PeerDeliverShare
from core.protocol._peer import PeerDeliverShareReply as PeerDeliverShareReply
from core.protocol._peer import PeerReencrypt as PeerReencrypt
from core.protocol._peer import PeerReencryptReply as PeerReencryptReply
from core.protocol._peer import PeerBlocks as PeerBlocks
from core.protocol._peer import PeerBlocksReply as PeerBlocksReply
from core.protocol._peer import Decision as Decision
from core.protocol._peer import PeerEvent as PeerEvent
from core.protocol._peer import CommitNotice as CommitNotice
from core.protocol._peer import MAX_ECHO_KEYS as MAX_ECHO_KEYS
from core.protocol._peer import echo_compact as echo_compact
from core.protocol._peer import echo_expand as echo_expand
from core.protocol._peer import COMMITS as COMMITS
from core.protocol._peer import NOTICE_TX_ID as NOTICE_TX_ID
from core.protocol._peer import commits_topic as commits_topic
from core.protocol._peer import commits_owner as commits_owner
from core.protocol._peer import HELD_SIZE as HELD_SIZE
from core.protocol._peer import OWN_KEY as OWN_KEY
from core.protocol._views import REQUEST_ANSWER as REQUEST_ANSWER
from core.protocol._views import REQUEST_ROW as REQUEST_ROW
from core.protocol._views import answer_from_row as answer_from_row
from core.protocol._views import request_row_view as request_row_view
from core.protocol._views import QUERY_VIEWS as QUERY_VIEWS
from core.protocol._views import NOTICE_VIEWS as NOTICE_VIEWS
from core.protocol._views import query_view as query_view
from core.protocol._views import requester_view as requester_view
from core.protocol._views import request_answer_view as request_answer_view
from core.protocol._views import grant_terms_view as grant_terms_view
from core.protocol._patient import PatientAccessRequest as PatientAccessRequest
from core.protocol._patient import PatientAccessRequestReply as PatientAccessRequestReply
from core.protocol._patient import GRANT_REPLY_FIELDS as GRANT_REPLY_FIELDS
from core.protocol._patient import GRANT_TERMS as GRANT_TERMS
from core.protocol._storage import MAX_MESSAGE_DATA as MAX_MESSAGE_DATA
from core.protocol._storage import RECEIPT_TAG as RECEIPT_TAG
from core.protocol._storage import make_receipt as make_receipt
from core.protocol._storage import receipt_message as receipt_message
from core.protocol._storage import verify_receipt as verify_receipt
from core.protocol._storage import MAX_LIST_LIMIT as MAX_LIST_LIMIT
from core.protocol._storage import SESSION_SIZE as SESSION_SIZE
from core.protocol._storage import DIGEST_SIZE as DIGEST_SIZE
from core.protocol._storage import StoragePut as StoragePut
from core.protocol._storage import StoragePutReply as StoragePutReply
from core.protocol._storage import StoragePutBegin as StoragePutBegin
from core.protocol._storage import StoragePutBeginReply as StoragePutBeginReply
from core.protocol._storage import StoragePutChunk as StoragePutChunk
from core.protocol._storage import StoragePutChunkReply as StoragePutChunkReply
from core.protocol._storage import StoragePutCommit as StoragePutCommit
from core.protocol._storage import StoragePutCommitReply as StoragePutCommitReply
from core.protocol._storage import StoragePutAbort as StoragePutAbort
from core.protocol._storage import StoragePutAbortReply as StoragePutAbortReply
from core.protocol._storage import StorageGet as StorageGet
from core.protocol._storage import StorageGetReply as StorageGetReply
from core.protocol._storage import StorageLeaves as StorageLeaves
from core.protocol._storage import StorageLeavesReply as StorageLeavesReply
from core.protocol._storage import StorageHas as StorageHas
from core.protocol._storage import StorageHasReply as StorageHasReply
from core.protocol._storage import StoragePin as StoragePin
from core.protocol._storage import StoragePinReply as StoragePinReply
from core.protocol._storage import StorageUnpin as StorageUnpin
from core.protocol._storage import StorageUnpinReply as StorageUnpinReply
from core.protocol._storage import StorageStat as StorageStat
from core.protocol._storage import BlobStatistics as BlobStatistics
from core.protocol._storage import NodeStatistics as NodeStatistics
from core.protocol._storage import StorageStatReply as StorageStatReply
from core.protocol._storage import StorageList as StorageList
from core.protocol._storage import StorageListReply as StorageListReply
from core.protocol._reencryption import REENCRYPTION_TAG as REENCRYPTION_TAG
from core.protocol._reencryption import reencryption_message as reencryption_message
from core.protocol._reencryption import make_reencrypt_reply as make_reencrypt_reply
from core.protocol._reencryption import verify_reencrypt_reply as verify_reencrypt_reply
from core.protocol._reencryption import share_context as share_context
from core.protocol._registry import Sender as Sender
from core.protocol._registry import ANYONE as ANYONE
from core.protocol._registry import REGISTERED as REGISTERED
from core.protocol._registry import CONSORTIUM as CONSORTIUM
from core.protocol._registry import KNOWN as KNOWN
from core.protocol._registry import admits as admits
from core.protocol._registry import admits_subscriber as admits_subscriber
from core.protocol._registry import KindSpec as KindSpec
from core.protocol._registry import TopicSpec as TopicSpec
from core.protocol._registry import KINDS as KINDS
from core.protocol._registry import TOPICS as TOPICS
from core.protocol._registry import KIND_CODES as KIND_CODES
from core.protocol._registry import TOPIC_CODES as TOPIC_CODES
from core.protocol._registry import RETIRED_KIND_CODES as RETIRED_KIND_CODES
from core.protocol._registry import spec as spec
from core.protocol import codes as codes
