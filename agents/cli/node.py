"""``emrshare node start|status|config``: one consortium node as a service.

``start --config FILE`` runs one peer, orderer or storage node from its own
TOML configuration (:mod:`agents.node.config`; every key overridable by
``EMRSHARE_NODE_*``) until SIGTERM or SIGINT, then prints one line and exits
0 (:mod:`agents.node.service`). ``status --config FILE`` asks the running
node over its control socket (height, connections, queue depths; exit 3 when
it does not answer). ``config --swarm DIR --id AGENT --out FILE`` exports a
node configuration, the genesis and a key store of its own for one agent of a
swarm directory (:func:`agents.node.export_node`). docs/deploy.md, "Running a
node", has the keys and systemd units.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any

from agents.cli.base import ENV_SWARM, CliError, UsageError, check_output_path, doing, env_default, env_help, fail
from agents.cli.base import unwrap, verbose

__all__ = ["start_main", "status_main", "config_main"]


def _load(path: str, what: str) -> Any:
    from agents.node import load_config

    with doing(what):
        return load_config(path)


def _check_address(option: str, text: str, what: str) -> None:
    """``--listen tcp://HOST:PORT`` or ``--metrics HOST:PORT``, a port 0..65535 (0: any free
    one), else UsageError (before the configuration is read)."""
    from agents.node.config import is_listen_address, is_metrics_address

    if option == "--listen":
        ok, shape, example = is_listen_address(text), "tcp://HOST:PORT", "tcp://127.0.0.1:7101"
    else:
        ok, shape, example = is_metrics_address(text), "HOST:PORT", "127.0.0.1:9464"
    if not ok:
        raise UsageError(what, f"{option} {text!r} is not {shape} with a port 0..65535",
                         f"write e.g. {option} {example}")


def start_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare node start",
        description="Run one peer, orderer or storage node from its configuration file until SIGTERM or SIGINT "
        "(then in-flight work gets [node] grace seconds, one line is printed, exit 0). Every key can be set "
        "by environment: EMRSHARE_NODE_<KEY> for [node], EMRSHARE_NODE_<TABLE>__<KEY> for the other tables; "
        "the key store's passphrase only by EMRSHARE_NODE_PASSPHRASE or [node] passphrase_file.")
    parser.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve /metrics, /health and /status over HTTP here (overrides [node] metrics)")
    parser.add_argument("--listen", metavar="tcp://HOST:PORT", help="the bus address to bind (overrides [node] listen)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log lines on stderr at this level and above (default info)")
    args = parser.parse_args(argv)
    what = f"node start --config {args.config}"
    for option, value in (("--listen", args.listen), ("--metrics", args.metrics)):
        if value is not None:
            _check_address(option, value, what)
    logging.basicConfig(level="DEBUG" if verbose() else args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = _load(args.config, what)
    if args.metrics:
        config.metrics = args.metrics
    if args.listen:
        config.listen = args.listen
        if not config.tls.enabled and config.binds_non_loopback:  # (the file's listen is checked at load)
            raise UsageError(what, f"--listen {args.listen} is outside loopback and the config has [tls] "
                             "enabled = false", "enable TLS in the config, or listen on a loopback address")
    from agents.node import start_node

    if config.role == "storage":  # this process serves blobs alone: keep freed 1-2 MiB buffers
        from agents.runtime import keep_freed_buffers

        keep_freed_buffers()
    try:
        return start_node(config)
    except BaseException as exc:  # an address in use names the option that chooses it
        taken = getattr(unwrap(exc), "filename", None)
        with doing(what, port_option="--metrics" if taken and taken == config.metrics else "--listen"):
            raise


def ask_node(config: Any, path: str, timeout: float) -> dict[str, Any]:
    """GET ``path`` from the node: its control socket, else its metrics endpoint; the JSON reply
    (CliError when it does not answer). ``emrshare node status`` and the load test use it."""
    errors = []
    targets: list[tuple[int, Any]] = []
    if config.control_socket.exists():
        targets.append((socket.AF_UNIX, str(config.control_socket)))
    if config.metrics:
        host, _, port = config.metrics.rpartition(":")
        targets.append((socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, (host.strip("[]"), int(port))))
    for family, address in targets:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(address)
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                    if len(data) > 1 << 20:
                        break
            head, _, body = data.partition(b"\r\n\r\n")
            return json.loads(body)
        except (OSError, ValueError) as exc:
            errors.append(f"{address}: {exc}")
    raise CliError("node status", f"node {config.id} does not answer"
                   + (f" ({'; '.join(errors)})" if errors else f" (no control socket at {config.control_socket})"),
                   "is it running? start it with `emrshare node start --config FILE`")


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare node status",
        description="Ask a running node (its control socket DATA_DIR/run/node.sock, else its metrics endpoint) "
        "for its height, connections and queue depths. Exit status 0 when it answers, 3 when it does not.")
    parser.add_argument("--config", required=True, metavar="FILE", help="the node's TOML configuration")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for the answer (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    config = _load(args.config, f"node status --config {args.config}")
    try:
        st = ask_node(config, "/status", args.timeout)
    except CliError as exc:
        if args.json:
            from agents.cli.output import print_json

            print_json({"id": config.id, "role": config.role, "state": "down"})
        print(f"emrshare: {exc}", file=sys.stderr)
        return 3
    if args.json:
        from agents.cli.output import print_json

        print_json(st)
        return 0
    q = ", ".join(f"{k} {v}" for k, v in st.get("queues", {}).items())
    c = st.get("connections", {})
    print(f"node {st['id']} ({st['role']}) {st['state']} at {st['address']}, height {st['height']}, "
          f"up {st['uptime_seconds']:.0f} s")
    print(f"  connections: {c.get('incoming', 0)} in, {c.get('outgoing', 0)} out; refusals {st.get('refusals', 0)}")
    if st.get("agents_connected") is not None:
        print(f"  agents heard over open connections: {', '.join(st['agents_connected']) or 'none'}")
    print(f"  queues: {q}")
    return 0


def config_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare node config",
        description="Export a node configuration for one agent of a swarm directory, so it can run on its own "
        "(`emrshare node start --config FILE`): the TOML file, the genesis, the agent's keys in a key store of "
        "their own under a NEW key file (or --passphrase-file), all beside FILE (secrets mode 0600). No "
        "enrollment secret: peers check users' tokens against the registrar keys in the genesis.")
    parser.add_argument("--swarm", "--data", dest="swarm", default=env_default(ENV_SWARM, "swarm-data"),
                        help=env_help("the swarm's data directory", ENV_SWARM, "swarm-data"))
    parser.add_argument("--id", required=True, metavar="AGENT", help="the agent (peer, orderer or storage node)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the configuration file to write (node.toml)")
    parser.add_argument("--listen", metavar="tcp://HOST:PORT",
                        help="the address the node binds (default: the agent's address in the swarm manifest)")
    parser.add_argument("--data-dir", default="", metavar="DIR",
                        help="the node's data directory (default data-AGENT beside FILE; a fresh one catches up "
                        "from the consortium)")
    parser.add_argument("--metrics", default="", metavar="HOST:PORT", help="the node's metrics endpoint (default none)")
    parser.add_argument("--passphrase-file", metavar="FILE",
                        help="encrypt the exported key store under the passphrase in FILE instead of a new key file")
    parser.add_argument("--json", action="store_true", help="print the files written as JSON")
    args = parser.parse_args(argv)
    from agents.swarm import SwarmFiles

    files = SwarmFiles(Path(args.swarm))
    if not files.exists:
        fail("node config", f"no swarm in {files.dir}", "give --swarm the swarm's data directory")
    manifest = files.manifest()
    agents = [manifest.orderer, *manifest.peers, *manifest.storage]
    if args.id not in agents:
        raise UsageError("node config", f"{args.id!r} is not a node of the swarm in {files.dir}",
                         f"choose one of {', '.join(agents)}")
    out = check_output_path(args.out, "node config")
    from agents.keys import KeyStoreError, read_passphrase_file
    from agents.node import export_node

    passphrase = None
    if args.passphrase_file:
        try:
            passphrase = read_passphrase_file(args.passphrase_file)
        except KeyStoreError as exc:
            fail("node config", str(exc))  # it says what to do
    with doing("node config"):
        written = export_node(files, args.id, out, listen=args.listen, data_dir=args.data_dir,
                              passphrase=passphrase, metrics=args.metrics)
    if args.json:
        from agents.cli.output import print_json

        print_json({"config": str(out), "files": [str(p) for p in written]})
        return 0
    print(f"wrote {out} for {args.id} ({', '.join(p.name for p in written[:-1])} beside it); "
          f"start it with `emrshare node start --config {out}`")
    return 0
