"""emrshare's agents: patients, doctors, consortium peers, the orderer and storage
nodes, each an autonomous trio task group talking over the bus.

This module is the public face for hospital integration services and for the
other layers: import from ``agents``, not from its modules. Subpackages with
their own faces: ``agents.storage`` (storage nodes and client), ``agents.fhir``
(the FHIR R4 facade's mappings; the server is ``agents.fhir.app``),
``agents.testing`` (synthetic FHIR data), ``agents.cli`` (the ``emrshare``
command), ``agents.bench`` (benchmarks and the load test).

Layout: ``client`` (talking to peers: the part patients and doctors share),
``plans`` (their timing policies, sans-I/O) and ``driver`` (running a plan
from trio), ``patient``, ``doctor``, ``peer/`` (a consortium peer), ``orderer``,
``storage/``, ``swarm`` (launching a local consortium), ``node/`` (one node as a
service: configuration, graceful stop, status and metrics), ``keys`` (keys and the
encrypted key store), ``consortium`` (the manifest and the bus's key
directory), ``runtime`` (endpoints and crypto threads), ``handlers`` (serving
kinds through core.protocol's types), ``ledger_store``
(SQLite ledger persistence), ``health`` (peer and storage health), ``errors``.

The names are those of the ``from .x import Name as Name`` lines below. Only
``errors`` is imported with the package; the other modules load on the first
use of one of their names (``__getattr__``), so a process that needs one role
(a patient's read, a storage node) does not import every role: ``import
agents.recordio`` costs the modules it uses, not the peer, orderer and swarm
(``emrshare bench storage`` measures a reader's memory after its imports).
Type checkers and readers see the names in the ``TYPE_CHECKING`` block.
"""

import typing

from .errors import AgentError as AgentError
from .errors import CertificateRevoked as CertificateRevoked
from .errors import EnrollmentExists as EnrollmentExists
from .errors import EnrollmentInvalid as EnrollmentInvalid
from .errors import GrantRevoked as GrantRevoked
from .errors import IntegrityError as IntegrityError
from .errors import NotEnoughPeers as NotEnoughPeers
from .errors import NotRegistered as NotRegistered
from .errors import PolicyDenied as PolicyDenied
from .errors import RecordNotFound as RecordNotFound
from .errors import RegistrationError as RegistrationError
from .errors import RequestRejected as RequestRejected
from .errors import SubmitTimeout as SubmitTimeout
from .errors import SubmitUnavailable as SubmitUnavailable
from .errors import TransactionRejected as TransactionRejected
from .errors import Unavailable as Unavailable
from .errors import UnknownAgent as UnknownAgent
from .errors import UnknownRequest as UnknownRequest

from ._lazy import exports as _exports

if typing.TYPE_CHECKING:
    from .client import UserConfig as UserConfig
    from .consortium import ConsortiumDirectory as ConsortiumDirectory
    from .consortium import Manifest as Manifest
    from .consortium import enroll_id as enroll_id
    from .consortium import enrollment_token as enrollment_token
    from .doctor import DoctorAgent as DoctorAgent
    from .doctor import cosign_break_glass as cosign_break_glass
    from .keys import AgentKeys as AgentKeys
    from .keys import KeyStore as KeyStore
    from .keys import KeyStoreError as KeyStoreError
    from .orderer import OrdererAgent as OrdererAgent
    from .patient import PatientAgent as PatientAgent
    from .patient import narrowed_policy as narrowed_policy
    from .peer import PeerAgent as PeerAgent
    from .swarm import Swarm as Swarm
    from .swarm import SwarmFiles as SwarmFiles
    from .swarm import AgentStartError as AgentStartError
    from .swarm import SwarmRunning as SwarmRunning
    from .swarm import SwarmSpec as SwarmSpec

_LAZY = {
    "UserConfig": "client",
    "ConsortiumDirectory": "consortium",
    "Manifest": "consortium",
    "enroll_id": "consortium",
    "enrollment_token": "consortium",
    "DoctorAgent": "doctor",
    "cosign_break_glass": "doctor",
    "AgentKeys": "keys",
    "KeyStore": "keys",
    "KeyStoreError": "keys",
    "OrdererAgent": "orderer",
    "PatientAgent": "patient",
    "narrowed_policy": "patient",
    "PeerAgent": "peer",
    "Swarm": "swarm",
    "SwarmFiles": "swarm",
    "AgentStartError": "swarm",
    "SwarmRunning": "swarm",
    "SwarmSpec": "swarm",
}
"""Lazily re-exported name -> the module of this package that defines it."""


__getattr__, __dir__ = _exports(__name__, _LAZY, globals())
