"""The command line every agent process shares (``python -m agents.peer``,
``python -m agents.storage``): the parser with its subcommands, the ``serve``
subcommand's common options, and the run itself (log to stderr, then trio).

    parser, commands = agent_parser("python -m agents.peer")
    serve = serve_command(commands, "run a consortium peer", key_file="the key that opens the key store")
    serve.add_argument("--data", ...)   # the agent's own options
    return run_agent(_serve, parser.parse_args(argv))
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

__all__ = ["agent_parser", "serve_command", "run_agent", "LOG_FORMAT"]

LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


def agent_parser(prog: str) -> tuple[argparse.ArgumentParser, Any]:
    """The process's parser and its (required) subcommands, to ``add_parser`` on."""
    parser = argparse.ArgumentParser(prog=prog)
    return parser, parser.add_subparsers(dest="command", required=True)


def serve_command(commands: Any, help: str, *, key_file: str) -> argparse.ArgumentParser:
    """The ``serve`` subcommand with the options every agent process takes: ``--id``,
    ``--key-file`` (``key_file`` is its help: what the file holds) and ``--listen``."""
    serve = commands.add_parser("serve", help=help)
    serve.add_argument("--id", required=True, help="the agent's id on the bus")
    serve.add_argument("--key-file", type=Path, required=True, help=key_file)
    serve.add_argument("--listen", default="tcp://127.0.0.1:0",
                       help="the address to accept connections on (default: a free loopback port)")
    return serve


def run_agent(serve: Callable[[argparse.Namespace], Awaitable[Any]], args: argparse.Namespace) -> int:
    """Log at INFO to stderr and run ``serve(args)`` under trio until it returns; 0."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
    trio.run(serve, args)
    return 0
