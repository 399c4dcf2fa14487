"""Package faces whose names load on first use (PEP 562): ``import agents`` costs
only what the caller touches (a user's CLI process does not load the peer, the
orderer, the swarm or the TLS code)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, table: Mapping[str, str],
            namespace: MutableMapping[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package ``package`` (its ``__name__``): a name of
    ``table`` (name -> the submodule that defines it) is imported on first use and kept in
    ``namespace`` (the package's globals), so later lookups do not come here; any other
    name is an AttributeError."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__
