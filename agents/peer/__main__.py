"""``python -m agents.peer serve ...``: one consortium peer as its own process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bus
from agents._entry import agent_parser, run_agent, serve_command
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
    parser, commands = agent_parser("python -m agents.peer")
    s = serve_command(commands, "run a consortium peer", key_file="the key file that opens --keystore")
    s.add_argument("--manifest", type=Path, required=True, help="the consortium's manifest (JSON)")
    s.add_argument("--keystore", type=Path, required=True, help="the key store holding the peer's keys")
    s.add_argument("--data", type=Path, required=True, help="the peer's data directory (its copy of the ledger)")
    s.add_argument("--no-enroll", action="store_true",
                   help="do not enroll users (tokens are checked against the registrar key in the genesis)")
    return run_agent(_serve, parser.parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
