"""``emrshare node start``: one server agent as a service, until SIGTERM or SIGINT.

:func:`start_node` checks the configuration (:mod:`agents.node.config`),
unlocks the key, builds the agent (:func:`agents.node.roles.build_agent`)
and runs it on its own bus node bound to ``[node] listen``; a bind outside
loopback is logged once (a warning). The bus node speaks mutual TLS 1.3
(``[tls]``: :func:`agents.tls.tls_transport` with the node's certificate, its
key as PEM in memory only, and the member organizations' TLS CAs from the
genesis) and admits a consortium agent only under a certificate naming it from
its organization's CA (:func:`agents.tls.admit_nodes`; a peer follows the
configuration its ledger holds); ``[tls] enabled = false`` (loopback only) is
plain TCP, logged as a warning. Once the agent runs, the process's collector is
kept (:func:`agents.gcpolicy.gc_keeper`: start-up state frozen, short full
collections). Beside it the node serves, over a tiny
HTTP server (:mod:`agents.node.http`):

* on its control socket ``DATA_DIR/run/node.sock`` (a Unix socket, mode 0600
  in a 0700 directory: the node's own user): ``/status`` (JSON: height,
  connections, queue depths), ``/health``, ``/metrics``;
* with ``[node] metrics = HOST:PORT`` (``--metrics``) the same routes on TCP
  for a Prometheus scraper.

Stopping: the first SIGTERM or SIGINT starts a graceful stop: ``/health``
says 503, the agent's in-flight work (the orderer's queued transactions, a
peer's submissions not yet forwarded, a storage node's open uploads; see
:meth:`agents.node.roles.RoleAgent.drain`) gets ``[node] grace`` seconds to
finish, then everything is cancelled (uploads still open are aborted, their
temporary files removed). A second signal cancels at once. The process
prints one line (``node ID stopped ...``) and exits 0.

A node started by ``swarm up --processes`` (environment
``EMRSHARE_SWARM_PARENT``) asks Linux for SIGTERM when that process dies
(``PR_SET_PDEATHSIG``), so a SIGKILLed swarm leaves no node behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import ssl
from collections.abc import Callable, Iterator

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bus import open_node
from core.ledger import parse_genesis

from agents.gcpolicy import gc_keeper
from agents.keys import atomic_write
from agents.node.config import NodeConfig, NodeConfigError, is_loopback
from agents.node.http import serve_http, unix_listener
from agents.node.metrics import CONTENT_TYPE, node_families, render
from agents.node.roles import RoleAgent, RoleSettings, build_agent

__all__ = ["NodeService", "exposed_secrets", "start_node", "stop_with_parent", "PARENT_ENV"]

log = logging.getLogger("agents.node")

PARENT_ENV = "EMRSHARE_SWARM_PARENT"  # the launching swarm's pid, for its node processes
MAX_UNIX_PATH = 100  # sockaddr_un's sun_path is 108 bytes on Linux


def _answers(path: Any) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` (a stale file does not)."""
    import socket

    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def stop_with_parent() -> None:
    """Linux: SIGTERM this process when the swarm process that started it dies, even by
    SIGKILL (no orphaned nodes holding ports); exit now if it is already gone."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return
    if os.getppid() != int(parent):  # the parent died before the prctl
        raise SystemExit(0)


@contextlib.contextmanager
def _binding(address: str) -> Iterator[None]:
    """An OSError raised while binding ``address`` names it (its ``filename``): the error
    says which of the node's addresses is taken."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = address
        raise


class NodeService:
    """A configured node: its agent, bus node and HTTP routes. :meth:`run` runs it."""

    def __init__(self, config: NodeConfig, agent: RoleAgent, *, transport: Any = None,
                 admit: Callable[[str, bytes | None], bool] | None = None):
        self.config = config
        self.agent = agent
        self.transport = transport  # the bus's tcp transport: mutual TLS (None: plain TCP, [tls] enabled = false)
        self.admit = admit  # admit_peer: a consortium node's certificate names it, from its organization's CA
        self.bus_options: dict[str, Any] = {}  # further open_node options (limits: handshake_timeout, ...)
        self.bus_node: Any = None
        self.address = ""
        self.started = time.time()
        self.stopping = False
        self.signal_name = ""
        self.abandoned = 0
        self.metrics_address = ""  # host:port the metrics endpoint bound
        self.early_signals: list[int] = []  # signals that came before run() listened (start_node)

    @classmethod
    def from_config(cls, config: NodeConfig) -> "NodeService":
        genesis = config.genesis_bytes()
        manifest = config.manifest(genesis)
        config.check_role(manifest)
        if _answers(config.control_socket):  # before the agent opens its ledger or blob store
            raise NodeConfigError(f"another node runs on data directory {config.data_dir} (its control socket "
                                  "answers); stop it, or give this node another data_dir")
        keys = config.unlock()  # last: a passphrase costs an Argon2id derivation
        o, s = config.orderer, config.storage_settings
        settings = RoleSettings(batch_size=o["batch_size"], batch_timeout=o["batch_timeout"],
                                reconcile_interval=s["reconcile_interval"], collect_grace=s["collect_grace"],
                                upload_timeout=s["upload_timeout"], enrolls=config.enrolls,
                                reply_cache=config.peer_settings.get("reply_cache", RoleSettings.reply_cache),
                                etcd_endpoints=tuple(config.ordering["endpoints"]),
                                etcd_window=config.ordering["window"], lease_ttl=config.ordering["lease_ttl"])
        if keys.ecdsa_public != manifest.keys.get(config.id):
            raise NodeConfigError(f"the key store {config.keystore} does not hold {config.id}'s key (its public key "
                                  "is not the one the genesis or [keys] names); check [node] keystore and id")
        for line in exposed_secrets(config):
            log.warning("node %s: %s", config.id, line)
        tls = _node_tls(config, genesis)  # before the agent opens its ledger or blob store
        try:
            agent = build_agent(config.id, config.role, keys, manifest, config.data_dir, settings)
        except ValueError as exc:
            raise NodeConfigError(f"{exc}; check [node] id, role and keystore") from None
        if tls is None:
            return cls(config, agent)
        admit = _admission(config, agent, tls, parse_genesis(genesis).config, manifest.storage)
        return cls(config, agent, transport=tls.transport, admit=admit)

    # ------------------------------------------------------------ routes

    def status(self) -> dict[str, Any]:
        stats = self.bus_node.statistics() if self.bus_node is not None else None
        ep = self.agent.endpoint_statistics()
        return {
            "id": self.config.id, "role": self.config.role, "address": self.address,
            "state": "stopping" if self.stopping else "serving", "height": self.agent.height(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "connections": {"incoming": getattr(stats, "incoming_connections", 0),
                            "outgoing": getattr(stats, "outgoing_connections", 0)},
            "queues": {"bus_inbox": getattr(ep, "inbox", 0), "bus_pending_requests": getattr(ep, "pending_requests", 0),
                       **self.agent.queues()},
            "refusals": sum(self.agent.refusals().values()),
            "agents_connected": self._connected(),
            **self.agent.status(),
        }

    def _connected(self) -> list[str] | None:
        """The configured agents this node heard from over a connection that is still open (None if
        the bus does not say)."""
        path_to = getattr(self.bus_node, "path_to", None)
        is_live = getattr(self.bus_node, "is_live", None)
        if path_to is None or is_live is None:
            return None
        return sorted(a for a in self.config.routes if (c := path_to(a)) is not None and is_live(c))

    def routes(self) -> dict[str, Any]:
        def health() -> tuple[int, str, bytes]:
            body = {"status": "stopping" if self.stopping else "ok", "id": self.config.id,
                    "role": self.config.role, "height": self.agent.height()}
            return (503 if self.stopping else 200), "application/json", json.dumps(body).encode() + b"\n"

        def status() -> tuple[int, str, bytes]:
            return 200, "application/json", json.dumps(self.status(), sort_keys=True).encode() + b"\n"

        def metrics() -> tuple[int, str, bytes]:
            families = node_families(self.config.role, self.config.id, self.agent, self.bus_node, self.started)
            return 200, CONTENT_TYPE, render(families).encode()

        return {"/health": health, "/status": status, "/metrics": metrics}

    # ------------------------------------------------------------ running

    async def _listeners(self) -> tuple[list[Any], list[Any]]:
        """(control socket listeners, metrics listeners)."""
        control: list[Any] = []
        run_dir = self.config.control_socket.parent
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(run_dir, 0o700)
        if len(str(self.config.control_socket)) <= MAX_UNIX_PATH:
            control.append(await unix_listener(str(self.config.control_socket)))
        else:
            log.warning("no control socket: %s is too long a path for a Unix socket; `emrshare node status` "
                        "needs [node] metrics", self.config.control_socket)
        metrics: list[Any] = []
        if self.config.metrics:
            host, _, port = self.config.metrics.rpartition(":")
            host = host.strip("[]")
            with _binding(self.config.metrics):
                metrics = list(await trio.open_tcp_listeners(int(port), host=host))
            bound = metrics[0].socket.getsockname()
            self.metrics_address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
            if not is_loopback(host):
                log.warning("node %s: metrics endpoint listens on %s, outside loopback (GET only, no "
                            "authentication: firewall it)", self.config.id, self.config.metrics)
        return control, metrics

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            tls = {"transports": {"tcp": self.transport}, "admit_peer": self.admit} if self.transport else {}
            async with open_node(routes={a: addr for a, addr in cfg.routes.items() if a != cfg.id}, **tls,
                                 **self.bus_options) as node:
                self.bus_node = node
                with _binding(cfg.listen):
                    self.address = await node.listen(cfg.listen)
                if cfg.binds_non_loopback:
                    log.warning("node %s listens on %s, outside loopback", cfg.id, self.address)
                if self.transport is None:
                    log.warning("node %s speaks plain TCP ([tls] enabled = false): any local process reaches its "
                                "channels; never outside tests", cfg.id)
                elif not cfg.tls.require_client_cert:
                    log.warning("node %s accepts TLS clients without a certificate ([tls] require_client_cert = "
                                "false): any machine that reaches %s gets to the channel handshake", cfg.id,
                                self.address)
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.agent.run, node)
                    await nursery.start(gc_keeper)  # start-up state frozen, full collections bounded
                    control, metrics = await self._listeners()
                    routes = self.routes()
                    if control:
                        await nursery.start(serve_http, control, routes)
                    if metrics:
                        await nursery.start(serve_http, metrics, routes)
                    self._ready()
                    task_status.started(self.address)
                    if self.early_signals:
                        self.signal_name = signal.Signals(self.early_signals[0]).name
                    else:
                        async for signum in signals:
                            self.signal_name = signal.Signals(signum).name
                            break
                    self.stopping = True
                    log.info("node %s: %s, stopping (grace %g s)", cfg.id, self.signal_name, cfg.grace)
                    with trio.move_on_after(cfg.grace):
                        async with trio.open_nursery() as draining:
                            draining.start_soon(self._cancel_on_second_signal, signals, draining.cancel_scope)
                            await self.agent.drain()
                            draining.cancel_scope.cancel()
                    self.abandoned = self.agent.busy()
                    nursery.cancel_scope.cancel()
        with contextlib.suppress(OSError):
            cfg.control_socket.unlink()

    @staticmethod
    async def _cancel_on_second_signal(signals: Any, scope: trio.CancelScope) -> None:
        async for _ in signals:
            scope.cancel()
            return

    def _ready(self) -> None:
        cfg = self.config
        if cfg.ready_file is not None:
            atomic_write(cfg.ready_file, str(os.getpid()).encode(), mode=0o644)
        print(f"node {cfg.id} ({cfg.role}) serving at {self.address}, height {self.agent.height()}"
              + (f", metrics at http://{self.metrics_address}/metrics" if self.metrics_address else ""), flush=True)

    def stopped_line(self) -> str:
        why = self.signal_name or "cancelled"
        tail = f"; {self.abandoned} in-flight item(s) abandoned after {self.config.grace:g} s" if self.abandoned else ""
        return f"node {self.config.id} stopped ({why}{tail})"


def exposed_secrets(config: NodeConfig) -> list[str]:
    """One line for each secret file of the configuration (``key_file``, ``passphrase_file``) that
    users other than its owner may read or write (mode bits 0o077): whoever reads it and the key
    stores is this node (its ledger and TLS keys). Warned at start, not refused (ssh refuses)."""
    out = []
    for what, path in (("key_file", config.key_file), ("passphrase_file", config.passphrase_file)):
        try:
            mode = path.stat().st_mode & 0o777 if path is not None else 0
        except OSError:
            continue  # unlocking says what is wrong with it
        if mode & 0o077:
            out.append(f"[node] {what} {path} is open to other users (mode {mode:04o}); `chmod 600 {path}`: whoever "
                       "reads it and the key stores holds this node's keys")
    return out


def _node_tls(config: NodeConfig, genesis: bytes) -> Any:
    """The node's mutual TLS (:class:`agents.tls.NodeTls`) from ``[tls]`` (None when ``enabled =
    false``): its certificate, its key (PEM in memory only) and the member organizations' TLS CAs
    of the genesis."""
    if not config.tls.enabled:
        return None
    from agents.org import key_to_pem
    from agents.tls import NodeTls, certificate_agents, genesis_cas

    cas = genesis_cas(parse_genesis(genesis).config)
    if not cas:
        raise NodeConfigError(f"genesis {config.genesis} names no organization TLS CA, so no TLS peer could be "
                              "trusted; build the genesis from `emrshare org init` profiles")
    cert_pem, key_der = config.tls_material()
    try:
        named = certificate_agents(x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER))
        key_pem = key_to_pem(key_der)
    except ValueError as exc:
        raise NodeConfigError(f"TLS certificate {config.tls.cert} or its key store {config.tls.keystore} is "
                              f"unreadable ({exc}); check [tls] cert and keystore") from None
    if config.id not in named:
        raise NodeConfigError(f"TLS certificate {config.tls.cert} names {', '.join(sorted(named)) or 'no agent'}, "
                              f"not {config.id}; give [tls] cert the certificate `emrshare org init` made for it")
    try:
        return NodeTls(cert_pem, key_pem, cas, require_client_cert=config.tls.require_client_cert)
    except (ssl.SSLError, ValueError) as exc:
        raise NodeConfigError(f"TLS certificate {config.tls.cert} does not go with the key in "
                              f"{config.tls.keystore} ({exc}); check [tls] cert and keystore") from None


def _admission(config: NodeConfig, agent: RoleAgent, tls: Any, genesis_config: Any,
               storage: list[str]) -> Callable[[str, bytes | None], bool]:
    """``admit_peer``: the CAs that vouch for each consortium node, following the configuration
    the node's ledger holds now (a peer follows configuration changes, and trusts a member they
    add from its next commit on; other roles keep the genesis's); a user's certificate must come
    from a member of that configuration (a removed member's machines are refused at once)."""
    from agents.tls import admit_nodes, genesis_cas, node_cas

    cache: dict[str, Any] = {}

    def current() -> dict[str, Any]:
        now = agent.consortium_config() or genesis_config
        if cache.get("config") is not now:
            added = tls.trust(genesis_cas(now))
            if added:
                log.info("node %s: trusting %d more member TLS CA(s) (configuration change)", config.id, len(added))
            cache["config"], cache["cas"] = now, node_cas(now, config.tls.orgs, storage)
            cache["members"] = tuple(genesis_cas(now))
        return cache["cas"]

    def members() -> tuple[bytes, ...]:
        current()
        return cache["members"]

    agent.on_commit(current)
    # a user's certificate from a member CA of the configuration in force (a removed member's CA stays in the
    # TLS trust store until restart; this stops its machines at the channel)
    return admit_nodes(current, members)


def start_node(config: NodeConfig) -> int:
    """Run the node until a signal; print one line when it stopped; return the exit status (0)."""
    # A signal before the node's own receiver opens (while the key store is unlocked, say) is remembered,
    # and the node stops as soon as it started; one after the receiver closed (systemd and `timeout`
    # signal the whole group, then the swarm signals its children again) is ignored, so the one line is
    # printed: trio's receiver restores these handlers when it closes.
    early: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _frame: early.append(n))
    stop_with_parent()
    service = NodeService.from_config(config)
    service.early_signals = early
    for var in config.overridden:
        log.info("configuration: %s from the environment", var)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    trio.run(service.run)
    print(service.stopped_line(), flush=True)
    return 0
