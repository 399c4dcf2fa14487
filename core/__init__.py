"""emrshare's pure, deterministic core: crypto API, PRE, ECDSA, policy, ledger rules, CIDs, schemas.

Nothing in this package performs I/O, awaits, or reads the clock or the
environment except through arguments (the one exception is the backend choice,
made once from ``EMRSHARE_BACKEND``: :mod:`core.backend`).

This module re-exports what the other layers use most; each public module is a
face of its own: :mod:`core.backend` (choosing the arithmetic backend),
:mod:`core.curve` (BLS12-381 groups), :mod:`core.ecdsa`, :mod:`core.pre`
(threshold proxy re-encryption), :mod:`core.record` (sealed records),
:mod:`core.cid` (content identifiers), :mod:`core.policy` (the access policy
language), :mod:`core.identity` (certificates, the consortium), :mod:`core.tx`
(transactions), :mod:`core.ledger` (blocks and the ledger rules),
:mod:`core.state` (state keys and typed views), :mod:`core.lightclient` (the
light client of certificates and stored CIDs), :mod:`core.protocol` (the wire protocol),
:mod:`core.canonical` (canonical msgpack), :mod:`core.kdf`, :mod:`core.errors`.
Modules starting with ``_`` are private to core.
"""

from .backend import available_backends as available_backends
from .backend import backend_name as backend_name
from .backend import selection_reason as selection_reason
from .errors import BackendError as BackendError
from .errors import CidMismatchError as CidMismatchError
from .errors import CoreError as CoreError
from .errors import DecodeError as DecodeError
from .errors import DecryptionError as DecryptionError
from .errors import FaultyShareError as FaultyShareError
from .errors import PolicyError as PolicyError
from .errors import SignatureError as SignatureError
from .errors import ValidationError as ValidationError
from .identity import Certificate as Certificate
from .identity import ConsortiumConfig as ConsortiumConfig
from .identity import OrgInfo as OrgInfo
from .identity import OrdererInfo as OrdererInfo
from .identity import PeerInfo as PeerInfo
from .ledger import Block as Block
from .ledger import Genesis as Genesis
from .ledger import Ledger as Ledger
from .ledger import make_genesis as make_genesis
from .ledger import parse_genesis as parse_genesis
from .ledger import read_genesis_draft as read_genesis_draft
from .lightclient import CertificateLightClient as CertificateLightClient
from .lightclient import StoredRecord as StoredRecord
from .policy import Policy as Policy
from .tx import Transaction as Transaction
