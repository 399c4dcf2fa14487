"""``python -m agents.storage``: run a storage node process, or make its keys.

    python -m agents.storage keygen --id s1 --key-file s1.key --directory dir.json
    python -m agents.storage serve --id s1 --dir /var/lib/emrshare/s1 \\
        --listen tcp://127.0.0.1:7401 --key-file s1.key --directory dir.json \\
        [--storage ID ...] [--node ID ...] [--quota BYTES] [--max-blob BYTES] \
        [--sender-quota BYTES] [--sessions-per-sender N]

``--key-file`` holds the node's ECDSA private key in hex (created with mode
0600 by ``keygen``); ``--directory`` is a JSON map of agent id to public key
(hex) of every agent allowed to talk to the node (the clients); it is re-read
when an unknown agent appears. ``--storage`` names the storage nodes and the
repair process (they put, unpin and list), ``--node`` the other consortium
nodes (they list and read); every other agent in the directory is a registered
user (agents.storage.node.StorageAccess). ``serve`` prints ``listening ADDRESS`` once it
accepts connections and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bus import open_node
from core import ecdsa

from agents._entry import agent_parser, run_agent, serve_command
from agents.runtime import make_endpoint, serve_until_signal
from agents.storage.blobstore import DEFAULT_MAX_BLOB, BlobStore
from agents.storage.node import DEFAULT_SENDER_QUOTA, DEFAULT_SESSIONS_PER_SENDER, StorageAccess, StorageNode


class FileDirectory:
    """Agent id -> public key from a JSON file, re-read when an id is missing."""

    def __init__(self, path: Path):
        self.path = path
        self._keys: dict[str, bytes] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(raw, dict):
            self._keys = {k: bytes.fromhex(v) for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}

    def __call__(self, agent: str) -> bytes | None:
        if agent not in self._keys:
            self._load()
        return self._keys.get(agent)


def load_private_key(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().strip())


def keygen(args: argparse.Namespace) -> int:
    key = ecdsa.generate_private_key()
    fd = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    directory = {}
    if args.directory.exists():
        directory = json.loads(args.directory.read_text())
    directory[args.id] = ecdsa.public_key(key).hex()
    args.directory.write_text(json.dumps(directory, indent=2, sort_keys=True) + "\n")
    print(f"{args.id}: key written to {args.key_file}, public key added to {args.directory}")
    return 0


async def serve(args: argparse.Namespace) -> None:
    from agents.runtime import keep_freed_buffers

    keep_freed_buffers()
    key = load_private_key(args.key_file)
    directory = FileDirectory(args.directory)
    store = BlobStore(args.dir, quota_bytes=args.quota, max_blob=args.max_blob)
    async with open_node() as bus:
        endpoint = make_endpoint(bus, args.id, key, directory)
        storage_ids = frozenset(args.storage)
        nodes = frozenset(args.node)
        access = StorageAccess(storage_ids, nodes,
                               lambda a: a not in storage_ids and a not in nodes and directory(a) is not None)
        node = StorageNode(endpoint, store, access=access, threads=args.threads,
                           sender_quota=args.sender_quota or None, sessions_per_sender=args.sessions_per_sender)
        address = await bus.listen(args.listen)
        await serve_until_signal(node.run, ready=lambda: print(f"listening {address}", flush=True))


def main(argv: list[str] | None = None) -> int:
    parser, commands = agent_parser("python -m agents.storage")
    k = commands.add_parser("keygen", help="create a node or client key and register it in a directory file")
    k.add_argument("--id", required=True, help="the agent whose key to create")
    k.add_argument("--key-file", type=Path, required=True, help="where to write the private key (hex, mode 0600)")
    k.add_argument("--directory", type=Path, required=True, help="the directory file to add the public key to")
    s = serve_command(commands, "run a storage node", key_file="the node's ECDSA private key (hex)")
    s.add_argument("--dir", type=Path, required=True, help="the node's data directory")
    s.add_argument("--directory", type=Path, required=True, help="the directory file: agent id -> public key")
    s.add_argument("--quota", type=int, default=None, help="disk quota in bytes (default: none)")
    s.add_argument("--max-blob", type=int, default=DEFAULT_MAX_BLOB,
                   help=f"the largest blob in bytes (default {DEFAULT_MAX_BLOB})")
    s.add_argument("--threads", type=int, default=4, help="threads for disk work (default 4)")
    s.add_argument("--storage", action="append", default=[], metavar="ID",
                   help="a storage node or the repair process (repeatable)")
    s.add_argument("--node", action="append", default=[], metavar="ID",
                   help="another consortium node: a peer or the orderer (repeatable)")
    s.add_argument("--sender-quota", type=int, default=DEFAULT_SENDER_QUOTA,
                   help=f"bytes one user may store first on this node (0: no limit; default {DEFAULT_SENDER_QUOTA})")
    s.add_argument("--sessions-per-sender", type=int, default=DEFAULT_SESSIONS_PER_SENDER,
                   help=f"put sessions one sender may hold open (default {DEFAULT_SESSIONS_PER_SENDER})")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return keygen(args)
    return run_agent(serve, args)

if __name__ == "__main__":
    sys.exit(main())
