"""What the benchmarks' command lines share: the parser of ``emrshare bench <name>``
with its ``--json FILE`` option, and writing the results there.

``--json FILE`` writes the results as indented JSON to FILE as well as printing the
table; ``--json -`` prints only the JSON (for scripts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["bench_parser", "write_json"]


def bench_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``emrshare bench <name>``, described by the first line of ``doc``
    (the module docstring), with the ``--json FILE`` option."""
    parser = argparse.ArgumentParser(prog=f"emrshare bench {name}", description=doc.strip().splitlines()[0])
    parser.add_argument("--json", metavar="FILE",
                        help="also write the results as JSON to FILE ('-': print only the JSON)")
    return parser


def write_json(path: str | None, results: Any) -> bool:
    """Write ``results`` as JSON to ``path`` (nothing for None), or print them for ``-``;
    whether they were printed (the command then prints nothing else)."""
    if not path:
        return False
    text = json.dumps(results, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return True
    Path(path).write_text(text)
    return False
