"""``python -m agents.peer serve ...``: one consortium peer as its own process."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import trio

import bus
from agents.consortium import Manifest
from agents.keys import AgentKeys
from agents.peer._agent import PeerAgent
from agents.runtime import serve_until_signal


async def _serve(args: argparse.Namespace) -> None:
    from agents.keys import KeyStore

    manifest = Manifest.from_json(args.manifest.read_text())
    keys = AgentKeys.from_bytes(KeyStore(args.keystore, key_file=args.key_file).load())
    peer = PeerAgent(peer_id=args.id, keys=keys, genesis=manifest.genesis, data_dir=args.data,
                     manifest=manifest, enrolls=not args.no_enroll)
    async with bus.open_node() as node:
        address = await node.listen(args.listen)
        await serve_until_signal(peer.run, node,
                                 ready=lambda: print(f"ready {address} {peer.ledger.height}", flush=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.peer serve --id ID --manifest FILE --keystore FILE --key-file FILE --data DIR
    [--listen tcp://127.0.0.1:0] [--no-enroll]``: run one peer until SIGINT/SIGTERM.

    The key store holds the peer's :class:`AgentKeys` (``KeyStore`` with a key file); the manifest's
    ``agents`` give the orderer's and the other peers' addresses. Prints ``ready ADDRESS HEIGHT``
    once it is subscribed and caught up.
    """
    parser = argparse.ArgumentParser(prog="python -m agents.peer")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a consortium peer")
    s.add_argument("--id", required=True)
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--keystore", type=Path, required=True)
    s.add_argument("--key-file", type=Path, required=True)
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--listen", default="tcp://127.0.0.1:0")
    s.add_argument("--no-enroll", action="store_true",
                   help="do not enroll users (tokens are checked against the registrar key in the genesis)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    trio.run(_serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
