"""Streamed record reads: storage bytes -> :class:`core.record.RecordOpener` -> a file.

:func:`read_record_to_file` is the bounded-memory read path of a sealed record
(the patient's and the doctor's ``read_to_file``). The blob streams from the
storage nodes through :meth:`agents.storage.StorageClient.read_to`, which
releases only pieces whose 256 KiB chunks hashed to the CID's leaf digests (the
digests themselves checked against the CID first), so the one hash on the way
in is that check; no whole-blob CID check follows. Each verified piece is fed
to a :class:`~core.record.RecordOpener` in a worker thread; the plaintext
chunks it releases (each authenticated by the record's AEAD) are written to a
temporary file next to the output, which is renamed over the output only after
:meth:`~core.record.RecordOpener.close` says every chunk arrived. A failure
(no replica serves the blob, a chunk fails authentication, the header does not
match the ledger) deletes the temporary file: nothing partial is left under the
output's name.

``check_header(header)`` runs when the sealed header has been parsed, before the
key provider and before any chunk is decrypted, so a record whose header does
not match what the ledger says is refused before any work on its body.

Memory held: the storage client's ``pipeline`` pieces of ``message_size``
bytes (the bus frames carrying them included), one partly received record
chunk and the plaintext of one piece.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import trio

from core import record as recordmod

from agents.runtime import run_crypto
from agents.storage import StorageClient

__all__ = ["read_record_to_file", "read_record"]


async def read_record(
    storage: StorageClient,
    cid: str,
    key_provider: recordmod.KeyProvider,
    write: Callable[[list[bytearray]], None],
    *,
    check_header: Callable[[recordmod.RecordHeader], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> recordmod.RecordHeader:
    """Stream record ``cid`` from ``storage``, pass its plaintext chunks in order to
    ``write(chunks)`` (called in a worker thread); return the header once the record
    is complete. Raises what the storage client or the opener raises; a caller
    that kept what ``write`` got must discard it then."""

    def provider(header: recordmod.RecordHeader) -> bytes:
        if check_header is not None:
            check_header(header)
        return key_provider(header)

    opener = recordmod.RecordOpener(provider)

    def consume(piece: bytes) -> None:
        chunks = opener.feed_buffers(piece)
        if chunks:
            write(chunks)

    async def sink(piece: bytes) -> None:
        await run_crypto(consume, piece)

    await storage.read_to(cid, sink, progress=progress)
    opener.close()
    assert opener.header is not None
    return opener.header


async def read_record_to_file(
    storage: StorageClient,
    cid: str,
    key_provider: recordmod.KeyProvider,
    out: str | os.PathLike[str],
    *,
    check_header: Callable[[recordmod.RecordHeader], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[recordmod.RecordHeader, int]:
    """Decrypt record ``cid`` into the file ``out`` in bounded memory (see the module
    docstring); return (header, plaintext bytes written)."""
    out = Path(out)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.part"
    fd = await trio.to_thread.run_sync(lambda: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    written = 0

    def write(chunks: list[bytearray]) -> None:
        nonlocal written
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            written += len(chunk)

    try:
        try:
            header = await read_record(storage, cid, key_provider, write, check_header=check_header,
                                       progress=progress)
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        await trio.to_thread.run_sync(os.replace, tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return header, written
