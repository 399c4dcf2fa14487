"""Storage errors keep their codes across the bus, and aggregate errors keep their causes."""

from agents.client import _unknown_sender
from agents.storage.errors import NotFound, StorageError, Unavailable, from_code


def test_from_code_rebuilds_known_types_and_keeps_unknown_codes():
    assert isinstance(from_code("storage.not-found", "x"), NotFound)
    err = from_code("unknown-sender", "who are you")
    assert type(err) is StorageError and err.code == "unknown-sender" and str(err) == "who are you"
    assert StorageError("plain").code == "storage.error"  # the class default is untouched


def test_unknown_sender_only_when_every_node_said_so():
    refused = {f"storage-{i}": from_code("unknown-sender", "no key") for i in range(3)}
    assert _unknown_sender(Unavailable("put: 0 of 2", refused))
    mixed = {**refused, "storage-3": from_code("storage.quota-exceeded", "full")}
    assert not _unknown_sender(Unavailable("put: 0 of 2", mixed))
    assert not _unknown_sender(Unavailable("no causes"))
    assert _unknown_sender(from_code("unknown-sender", "direct"))
