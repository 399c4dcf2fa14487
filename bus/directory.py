"""Key directories: agent id -> registered public key.

A directory is any ``Callable[[str], bytes | None]``. :class:`StaticDirectory`
is the fixed one for tests and local swarms; the consortium's certificate
registry plugs in the same way later.
"""

from __future__ import annotations

__all__ = ["StaticDirectory"]

from collections.abc import Iterator, Mapping


class StaticDirectory(Mapping[str, bytes]):
    """A fixed (but extendable) mapping of agent ids to public keys, callable
    as a directory."""

    def __init__(self, keys: Mapping[str, bytes] | None = None):
        self._keys: dict[str, bytes] = {}
        for agent, key in (keys or {}).items():
            self.register(agent, key)

    def register(self, agent: str, public_key: bytes) -> None:
        if not isinstance(agent, str) or not agent:
            raise ValueError("agent id must be a non-empty str")
        if not isinstance(public_key, bytes) or not public_key:
            raise ValueError("public key must be non-empty bytes")
        self._keys[agent] = public_key

    def remove(self, agent: str) -> None:
        self._keys.pop(agent, None)

    def __call__(self, agent: str) -> bytes | None:
        return self._keys.get(agent)

    def __getitem__(self, agent: str) -> bytes:
        return self._keys[agent]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
