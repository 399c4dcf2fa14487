"""The consortium peer: enrolls users, relays transactions to the orderer,
validates and commits every block, answers queries and audits, keeps sealed
re-encryption key shares and re-encrypts for authorized doctors.

``python -m agents.peer serve ...`` runs one peer as its own process.
"""

from agents.peer._agent import MAX_BLOCKS_PER_REPLY as MAX_BLOCKS_PER_REPLY
from agents.peer._agent import REENCRYPTION_TAG as REENCRYPTION_TAG
from agents.peer._agent import PeerAgent as PeerAgent
from agents.peer._agent import share_context as share_context
