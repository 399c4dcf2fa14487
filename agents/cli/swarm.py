"""``emrshare swarm up|status|down``: run and inspect a local consortium.

``up`` launches peers, orderer and storage nodes from flags or a TOML file
(``--config``, a ``[swarm]`` table). On a directory that already holds a swarm
it resumes that swarm, and refuses flags that contradict the saved settings
(one line naming them) instead of silently ignoring them; it refuses a
non-empty directory that holds no swarm, a path that is a file, and a
directory whose swarm already runs (the directory's lock,
:meth:`agents.swarm.SwarmFiles.lock`). Ctrl-C or SIGTERM stops every agent
(with ``--processes``, every child process too) and prints ``swarm stopped``.
Log lines go to ``DIR/logs/swarm.log`` (warnings; everything on the terminal
with ``--verbose``); with ``--processes`` each agent also logs to
``DIR/logs/<agent>.log``.

``status`` says whether the swarm runs (and which process runs it), its
settings, and for every agent its address and whether it accepts TCP
connections (``--json`` for machines). ``down`` sends SIGTERM to the process
that runs the swarm and waits until it let go of the lock.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from agents.cli.base import ENV_SWARM, CliError, UsageError, env_default, env_help, fail, verbose
from agents.cli.output import print_json, table, utc_seconds

__all__ = ["up_main", "status_main", "down_main"]

DEFAULT_DATA = "swarm-data"
_SETTINGS = ("hospitals", "peers", "threshold", "storage_nodes", "replicas", "write_quorum", "port", "batch_size",
             "reconcile_interval", "ordering")


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", "--swarm", dest="data", default=env_default(ENV_SWARM, DEFAULT_DATA),
                        help=env_help("the swarm's data directory", ENV_SWARM, DEFAULT_DATA))


def _files(data: str, what: str):
    from agents.swarm import SwarmFiles

    path = Path(data)
    if path.exists() and not path.is_dir():
        fail(what, f"{path} is a file, not a directory", "give --data a directory")
    return SwarmFiles(path)


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings given, where each came from) from --config then the flags."""
    settings: dict[str, Any] = {}
    source: dict[str, str] = {}
    if args.config:
        path = Path(args.config)
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            fail(f"swarm up --config {path}", f"not valid TOML: {exc}", "fix the file")
        except OSError as exc:
            fail(f"swarm up --config {path}", (exc.strerror or str(exc)).lower(), "check the path")
        table_ = doc.get("swarm", doc)
        if not isinstance(table_, dict):
            fail(f"swarm up --config {path}", "[swarm] is not a table", "see `emrshare swarm up --help`")
        for k, v in table_.items():
            settings[k] = v
            source[k] = f"{k} = {v!r} in {path}"
    for name in _SETTINGS:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
            source[name] = f"--{name.replace('_', '-')} {value}"
    if args.processes:
        settings["processes"] = True
        source["processes"] = "--processes"
    return settings, source


def _conflicts(saved: Any, settings: dict[str, Any], source: dict[str, str]) -> list[str]:
    out = []
    for name, value in settings.items():
        if name == "port" and not saved.processes:
            continue  # in-process mode binds a new port at each start
        if hasattr(saved, name) and getattr(saved, name) != value:
            out.append(f"{source[name]} (saved: {getattr(saved, name)})")
    return out


def up_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="emrshare swarm up", description="Launch a local consortium: peers of several hospitals, an "
        "ordering service and storage nodes. A directory that holds a swarm is resumed (same keys, ledgers, "
        "blobs); Ctrl-C or SIGTERM (`emrshare swarm down`) stops it.")
    _data_option(parser)
    parser.add_argument("--config", metavar="FILE", help="TOML file with a [swarm] table of the settings below")
    parser.add_argument("--hospitals", type=int, metavar="N", help="number of hospitals (default 2)")
    parser.add_argument("--peers", type=int, metavar="N", help="number of peers, spread over the hospitals (default 4)")
    parser.add_argument("--threshold", type=int, metavar="T", help="peers needed to re-encrypt, t of n (default 2)")
    parser.add_argument("--storage-nodes", dest="storage_nodes", type=int, metavar="N",
                        help="number of storage nodes (default 3)")
    parser.add_argument("--replicas", type=int, metavar="R", help="copies of every blob (default 3)")
    parser.add_argument("--write-quorum", dest="write_quorum", type=int, metavar="W",
                        help="copies durable before a store returns (default 2)")
    parser.add_argument("--port", type=int, help="in-process mode: TCP port of the swarm's bus node at this start "
                        "(default: the one given when the swarm was created, else any free)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                        help="most transactions per block (default 500)")
    parser.add_argument("--reconcile-interval", dest="reconcile_interval", type=float, metavar="SECONDS",
                        help="seconds between the storage nodes' reconcile rounds (default 30)")
    parser.add_argument("--processes", action="store_true", help="run each agent in its own process")
    parser.add_argument("--ordering", choices=("embedded", "etcd"),
                        help="ordering service: the embedded orderer (default), or etcd: two orderer nodes over a "
                             "local 3-member etcd cluster (needs the etcd binary: apt-get install etcd-server)")
    args = parser.parse_args(argv)
    from agents.swarm import SwarmSpec, check_port

    files = _files(args.data, "swarm up")
    settings, source = _settings(args)
    port = None  # an in-process swarm's port for this start (resumed: not saved)
    if files.exists:
        try:
            saved = files.spec()
        except (OSError, ValueError, TypeError) as exc:  # (invalid JSON, unknown settings)
            raise UsageError("swarm up", f"{files.dir}/swarm.json is unreadable: {exc}",
                             "fix that file, or give a new --data directory") from None
        conflicts = _conflicts(saved, settings, source)
        if conflicts:
            raise UsageError("swarm up", f"{files.dir} holds a swarm created with other settings: "
                             + ", ".join(conflicts), "drop these flags to resume it, or give a new --data directory")
        spec = saved
        if "port" in settings and not saved.processes:
            port = settings["port"]
            try:
                check_port(port)
            except ValueError as exc:
                raise UsageError("swarm up", str(exc), "see `emrshare swarm up --help`") from None
            spec = dataclasses.replace(saved, port=port)
        try:
            spec.check()
        except ValueError as exc:  # (saved by an older emrshare, or edited by hand)
            raise UsageError("swarm up", f"{files.dir}/swarm.json holds invalid settings: {exc}",
                             "fix that file, or give a new --data directory") from None
    else:
        if files.dir.exists() and any(files.dir.iterdir()):
            fail("swarm up", f"{files.dir} is not empty and holds no swarm (no manifest.json)",
                 "give an empty or new --data directory")
        try:
            spec = SwarmSpec.from_mapping(settings, files.dir)
            spec.check()
        except (ValueError, TypeError) as exc:
            raise UsageError("swarm up", str(exc), "see `emrshare swarm up --help`") from None
    holder = files.running()
    if holder is not None:
        fail("swarm up", f"the swarm in {files.dir} is already running (pid {holder.get('pid', '?')})",
             f"use it, or stop it with `emrshare swarm down --data {args.data}`")
    _log_to_file(files.dir / "logs" / "swarm.log")
    return _run_swarm(spec, port)


def _log_to_file(path: Path) -> None:
    """Warnings (e.g. the agents' refusals of bad requests) go to the swarm's log file; the
    terminal sees log lines only with --verbose."""
    if verbose():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _run_swarm(spec: Any, port: int | None = None) -> int:
    import trio

    from agents.swarm import Swarm

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                async with Swarm.open(spec, port=port) as swarm:
                    print(swarm.describe(), flush=True)
                    print(f"manifest: {swarm.files.dir / 'manifest.json'}, logs: {swarm.files.dir / 'logs'}  "
                          "(Ctrl-C or `emrshare swarm down` stops)", flush=True)
                    await trio.sleep_forever()

    from agents.cli.base import doing

    with doing(f"swarm up on port {spec.port}" if spec.port and not spec.processes else "swarm up"):
        trio.run(main)
    print("swarm stopped", file=sys.stderr)
    return 0


def _reachable(address: str, timeout: float = 0.5) -> bool:
    if not address.startswith("tcp://"):
        return False
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def status(files: Any) -> dict[str, Any]:
    """The swarm's status as data (what ``emrshare swarm status --json`` prints)."""
    holder = files.running()
    spec = files.spec()
    manifest = files.manifest()
    agents = []
    seen: dict[str, bool] = {}
    from agents.errors import AgentError
    from agents.swarm import orderer_agents, server_agents

    orderers = orderer_agents(manifest)
    try:
        placed = files.node_orgs()  # (every node's hospital, from the organizations' profiles)
    except (OSError, AgentError):  # (a damaged profile: the peers' hospitals still come from the manifest)
        placed = {}
    for agent in server_agents(manifest):
        role = "orderer" if agent in orderers else "peer" if agent in manifest.peers else "storage"
        org = placed.get(agent) or next((o for o, ps in manifest.peer_orgs.items() if agent in ps), "")
        address = manifest.agents.get(agent, "")
        if holder is not None and address not in seen:
            seen[address] = _reachable(address)
        agents.append({"id": agent, "role": role, "org": org, "address": address,
                       "up": bool(holder is not None and seen.get(address))})
    users = sorted(p.name for p in (files.dir / "users").iterdir()) if (files.dir / "users").is_dir() else []
    return {
        "data": str(files.dir), "running": holder is not None,
        "pid": holder.get("pid") if holder else None,
        "started": holder.get("started") if holder else None,
        "processes": spec.processes, "hospitals": spec.hospitals, "threshold": manifest.threshold,
        "peers": len(manifest.peers), "storage_nodes": len(manifest.storage), "replicas": manifest.replicas,
        "write_quorum": manifest.write_quorum, "agents": agents, "users": users,
    }


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emrshare swarm status",
                                     description="Is the swarm running; its settings, agents and their addresses. "
                                     "Exit status 0 when it runs, 3 when it is stopped.")
    _data_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    files = _files(args.data, "swarm status")
    if not files.exists:
        fail("swarm status", f"no swarm in {files.dir}", f"start one with `emrshare swarm up --data {args.data}`")
    st = status(files)
    if args.json:
        print_json(st)
        return 0 if st["running"] else 3
    state = (f"running (pid {st['pid']}, since {utc_seconds(st['started'])})" if st["running"] else "stopped")
    print(f"swarm in {st['data']}: {state}")
    print(f"  {st['peers']} peers of {st['hospitals']} hospitals, threshold {st['threshold']}; "
          f"{st['storage_nodes']} storage nodes (replicas {st['replicas']}, write quorum {st['write_quorum']}); "
          f"{'one process per agent' if st['processes'] else 'one process'}")
    table(["agent", "role", "hospital", "address", "state"],
          [[a["id"], a["role"], a["org"], a["address"], "up" if a["up"] else "down"] for a in st["agents"]])
    if st["users"]:
        print(f"  users: {', '.join(st['users'])}")
    return 0 if st["running"] else 3


def down_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emrshare swarm down",
                                     description="Stop the swarm running on a data directory (SIGTERM, then wait).")
    _data_option(parser)
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for it to stop (default 30)")
    args = parser.parse_args(argv)
    files = _files(args.data, "swarm down")
    if not files.exists:
        fail("swarm down", f"no swarm in {files.dir}", "check --data")
    holder = files.running()
    if holder is None:
        print(f"the swarm in {files.dir} is not running")
        return 0
    pid = holder.get("pid")
    if not isinstance(pid, int):
        fail("swarm down", f"the lock on {files.dir} names no process", "stop the swarm with Ctrl-C where it runs")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        fail("swarm down", f"not allowed to signal process {pid}", "run as the user who started the swarm")
    deadline = time.monotonic() + args.timeout
    while files.running() is not None:
        if time.monotonic() > deadline:
            raise CliError("swarm down", f"process {pid} still runs the swarm after {args.timeout:g} s",
                           f"wait, or kill it (kill {pid})")
        time.sleep(0.1)
    print("swarm stopped")
    return 0
