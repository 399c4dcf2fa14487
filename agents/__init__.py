"""emrshare's agents: patients, doctors, consortium peers, the orderer and storage
nodes, each an autonomous trio task group talking over the bus.

This module is the public face for hospital integration services and for the
other layers: import from ``agents``, not from its modules. Subpackages with
their own faces: ``agents.storage`` (storage nodes and client),
``agents.testing`` (synthetic FHIR data), ``agents.cli`` (the ``emrshare``
command), ``agents.bench`` (benchmarks and the load test).

Layout: ``client`` (talking to peers: the part patients and doctors share),
``patient``, ``doctor``, ``peer/`` (a consortium peer), ``orderer``,
``storage/``, ``swarm`` (launching a local consortium), ``keys`` (keys and the
encrypted key store), ``consortium`` (the manifest and the bus's key
directory), ``runtime`` (endpoints and crypto threads), ``handlers`` (serving
kinds through core.protocol's types), ``ledger_store``
(SQLite ledger persistence), ``health`` (peer and storage health), ``errors``.
"""

from agents.client import UserConfig as UserConfig
from agents.consortium import ConsortiumDirectory as ConsortiumDirectory
from agents.consortium import Manifest as Manifest
from agents.consortium import enroll_id as enroll_id
from agents.consortium import enrollment_token as enrollment_token
from agents.doctor import DoctorAgent as DoctorAgent
from agents.errors import AgentError as AgentError
from agents.errors import CertificateRevoked as CertificateRevoked
from agents.errors import EnrollmentExists as EnrollmentExists
from agents.errors import EnrollmentInvalid as EnrollmentInvalid
from agents.errors import GrantRevoked as GrantRevoked
from agents.errors import IntegrityError as IntegrityError
from agents.errors import NotEnoughPeers as NotEnoughPeers
from agents.errors import NotRegistered as NotRegistered
from agents.errors import PolicyDenied as PolicyDenied
from agents.errors import RecordNotFound as RecordNotFound
from agents.errors import RegistrationError as RegistrationError
from agents.errors import RequestRejected as RequestRejected
from agents.errors import SubmitTimeout as SubmitTimeout
from agents.errors import SubmitUnavailable as SubmitUnavailable
from agents.errors import TransactionRejected as TransactionRejected
from agents.errors import Unavailable as Unavailable
from agents.errors import UnknownAgent as UnknownAgent
from agents.errors import UnknownRequest as UnknownRequest
from agents.keys import AgentKeys as AgentKeys
from agents.keys import KeyStore as KeyStore
from agents.keys import KeyStoreError as KeyStoreError
from agents.orderer import OrdererAgent as OrdererAgent
from agents.patient import PatientAgent as PatientAgent
from agents.peer import PeerAgent as PeerAgent
from agents.swarm import Swarm as Swarm
from agents.swarm import SwarmFiles as SwarmFiles
from agents.swarm import SwarmSpec as SwarmSpec
