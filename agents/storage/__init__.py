"""Storage nodes: content-addressed blobs on disk, replicated over the bus.

* :class:`BlobStore` (``blobstore``): one node's directory of blobs — durable
  atomic puts, reads that hash every chunk they serve once (then keep a
  verified-at-rest mark), pins, quota.
* :class:`StorageNode` (``node``): the agent serving a store over the bus.
* :class:`StorageClient` (``client``): replicated put (w of r acknowledgements,
  replicas chosen by rendezvous hashing), verified reads with fallback, repair.
* :class:`KuboClient` (``kubo``): the same client API over a Kubo node's RPC API.
* :class:`Reconciler` (``reconcile``): a storage node's background loop matching its
  blobs to the ledger (pulls missing copies of committed blobs, collects unnamed ones),
  around the sans-I/O :class:`ReconcilePlan`.

Run a node: ``python -m agents.storage serve --id ID --dir DIR --listen tcp://127.0.0.1:PORT``.

Only ``errors`` is imported with the package; the names below load their
module on first use (``__getattr__``, as in :mod:`agents`), so a reader that uses
the client does not load the node, the reconciler or the Kubo client.
"""

import typing

from .errors import BadRequest as BadRequest
from .errors import Busy as Busy
from .errors import Forbidden as Forbidden
from .errors import BlobTooLarge as BlobTooLarge
from .errors import CidMismatch as CidMismatch
from .errors import CorruptBlob as CorruptBlob
from .errors import DiskFull as DiskFull
from .errors import NotFound as NotFound
from .errors import QuotaExceeded as QuotaExceeded
from .errors import StorageError as StorageError
from .errors import StorageUnavailable as StorageUnavailable
from .errors import Unavailable as Unavailable

from .._lazy import exports as _exports

if typing.TYPE_CHECKING:
    from .blobstore import BlobStat as BlobStat
    from .blobstore import BlobStore as BlobStore
    from .blobstore import PutSession as PutSession
    from .blobstore import StoreStat as StoreStat
    from .client import ClientStatistics as ClientStatistics
    from .client import RepairReport as RepairReport
    from .client import StorageClient as StorageClient
    from .kubo import KuboClient as KuboClient
    from .node import StorageAccess as StorageAccess
    from .node import StorageNode as StorageNode
    from .reconcile import ReconcilePlan as ReconcilePlan
    from .reconcile import Reconciler as Reconciler

_LAZY = {
    "BlobStat": "blobstore",
    "BlobStore": "blobstore",
    "PutSession": "blobstore",
    "StoreStat": "blobstore",
    "ClientStatistics": "client",
    "RepairReport": "client",
    "StorageClient": "client",
    "KuboClient": "kubo",
    "StorageAccess": "node",
    "StorageNode": "node",
    "ReconcilePlan": "reconcile",
    "Reconciler": "reconcile",
}
"""Lazily re-exported name -> the module of this package that defines it."""


__getattr__, __dir__ = _exports(__name__, _LAZY, globals())
