"""``emrshare swarm up``: launch a local consortium (peers, orderer, storage) from flags or a TOML file."""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any

import trio

from agents.swarm import Swarm, SwarmSpec


def _spec_from_args(args: argparse.Namespace) -> SwarmSpec:
    data_dir = Path(args.data).resolve()
    settings: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as f:
            doc = tomllib.load(f)
        settings.update(doc.get("swarm", doc))
    for name in ("hospitals", "peers", "threshold", "storage_nodes", "replicas", "write_quorum", "port",
                 "batch_size", "reconcile_interval"):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if args.processes:
        settings["processes"] = True
    return SwarmSpec.from_mapping(settings, data_dir)


def up_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="emrshare swarm up", description="launch a local consortium")
    parser.add_argument("--data", default="swarm-data", help="data directory (resumed if it exists)")
    parser.add_argument("--config", help="TOML file with a [swarm] table of the settings below")
    parser.add_argument("--hospitals", type=int)
    parser.add_argument("--peers", type=int)
    parser.add_argument("--threshold", type=int)
    parser.add_argument("--storage-nodes", dest="storage_nodes", type=int)
    parser.add_argument("--replicas", type=int)
    parser.add_argument("--write-quorum", dest="write_quorum", type=int)
    parser.add_argument("--port", type=int, help="in-process mode: TCP port of the swarm's bus node")
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--reconcile-interval", dest="reconcile_interval", type=float,
                        help="seconds between storage nodes' reconcile rounds (default 30)")
    parser.add_argument("--processes", action="store_true", help="run each agent in its own process")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        spec = _spec_from_args(args)
        spec.check()
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"emrshare swarm up: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        async with Swarm.open(spec) as swarm:
            print(swarm.describe(), flush=True)
            print(f"manifest: {swarm.files.dir / 'manifest.json'}  (Ctrl-C stops)", flush=True)
            await trio.sleep_forever()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("swarm stopped", file=sys.stderr)
    return 0
