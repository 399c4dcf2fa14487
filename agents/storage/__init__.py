"""Storage nodes: content-addressed blobs on disk, replicated over the bus.

* :class:`BlobStore` (``blobstore``): one node's directory of blobs — durable
  atomic puts, reads that re-hash every chunk they serve, pins, quota.
* :class:`StorageNode` (``node``): the agent serving a store over the bus.
* :class:`StorageClient` (``client``): replicated put (w of r acknowledgements,
  replicas chosen by rendezvous hashing), verified reads with fallback, repair.
* :class:`KuboClient` (``kubo``): the same client API over a Kubo node's RPC API.

Run a node: ``python -m agents.storage serve --id ID --dir DIR --listen tcp://127.0.0.1:PORT``.
"""

from agents.storage.blobstore import BlobStat as BlobStat
from agents.storage.blobstore import BlobStore as BlobStore
from agents.storage.blobstore import PutSession as PutSession
from agents.storage.blobstore import StoreStat as StoreStat
from agents.storage.errors import BadRequest as BadRequest
from agents.storage.errors import BlobTooLarge as BlobTooLarge
from agents.storage.errors import CidMismatch as CidMismatch
from agents.storage.errors import CorruptBlob as CorruptBlob
from agents.storage.errors import DiskFull as DiskFull
from agents.storage.errors import NotFound as NotFound
from agents.storage.errors import QuotaExceeded as QuotaExceeded
from agents.storage.errors import StorageError as StorageError
from agents.storage.errors import StorageUnavailable as StorageUnavailable
from agents.storage.errors import Unavailable as Unavailable
from agents.storage.client import ClientStatistics as ClientStatistics
from agents.storage.client import RepairReport as RepairReport
from agents.storage.client import StorageClient as StorageClient
from agents.storage.kubo import KuboClient as KuboClient
from agents.storage.node import StorageNode as StorageNode
