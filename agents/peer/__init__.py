"""The consortium peer: enrolls users, relays transactions to the orderer,
validates and commits every block, answers queries and audits, keeps sealed
re-encryption key shares and re-encrypts for authorized doctors.

By job: ``_agent`` (:class:`PeerAgent`: lifecycle, commit listeners,
``wait_for_height``), ``_sync`` (block sync), ``_forwarder`` (transaction
forwarding and submit waiters), ``_handlers`` (the ``peer.*`` kinds), ``_audit``
(the access log), ``_batch`` (worker-thread jobs run in batches).
``python -m agents.peer serve ...`` runs one peer as its own process.
"""

from core.protocol import MAX_BLOCKS_PER_REPLY as MAX_BLOCKS_PER_REPLY
from core.protocol import REENCRYPTION_TAG as REENCRYPTION_TAG
from core.protocol import share_context as share_context

from agents.peer._agent import PeerAgent as PeerAgent
