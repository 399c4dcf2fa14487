"""Ordering on an etcd (Raft) cluster that survives its leader (issue 15; docs/ordering.md).

* :mod:`agents.ordering.etcd`: :class:`EtcdClient` (etcd's v3 JSON gateway from trio
  over httpx), :class:`EtcdCluster` (local etcd member processes), :func:`etcd_binary`.
* :mod:`agents.ordering.node`: :class:`EtcdOrderer`, one node of the ordering service
  (lease-elected leader, one-txn appends, blocks served and published from etcd).

The embedded orderer (:class:`agents.orderer.OrdererAgent`) stays the default.
"""

from .etcd import ETCD_BLOCK_BYTES as ETCD_BLOCK_BYTES
from .etcd import ETCD_MAX_REQUEST_BYTES as ETCD_MAX_REQUEST_BYTES
from .etcd import EtcdClient as EtcdClient
from .etcd import EtcdCluster as EtcdCluster
from .etcd import EtcdUnavailable as EtcdUnavailable
from .etcd import etcd_binary as etcd_binary
from .node import EtcdOrderer as EtcdOrderer
from .node import chain_prefix as chain_prefix
from .node import current_leader as current_leader

__all__ = ["ETCD_BLOCK_BYTES", "ETCD_MAX_REQUEST_BYTES", "EtcdClient", "EtcdCluster", "EtcdOrderer", "EtcdUnavailable",
           "chain_prefix", "current_leader", "etcd_binary"]
