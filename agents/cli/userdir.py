"""A user's own key directory: what ``emrshare user init`` and ``user enroll`` write
there, and what ``emrshare patient|doctor --dir DIR`` reads back.

Layout (``DIR``, mode 0700; ``*.keys``/``keys.bin`` encrypted under the user's
passphrase or key file, never stored in ``DIR``)::

    DIR/keys.bin        the agent's keys (ECDSA, X25519, PRE master secret)
    DIR/tls.keys        the TLS private key (P-256, PKCS#8 DER), same unlock
    DIR/enroll.pub      the enrolling ECDSA public key (hex)
    DIR/request.json    the public request for the registrar: enrolling key + TLS public key
    DIR/tls.pem         the TLS client certificate from the organization's TLS CA (after enroll)
    DIR/genesis         the consortium's genesis (after enroll)
    DIR/manifest.json   the consortium's manifest: every node's address and key (after enroll)
    DIR/cli.json        {"subject", "org", "manifest": "full" | "peer"} (after enroll)
    DIR/state.msgpack   the agent's own state (its ledger certificate, grants, ...)

``manifest`` is ``"peer"`` when the user enrolled with ``--genesis --peer``: the
manifest then knows one peer's address only, not enough for daily use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.cli.base import fail

__all__ = ["TLS_KEY_FILE", "TLS_CERT_FILE", "REQUEST_FILE", "META_FILE", "Enrolled", "tls_store",
           "user_transport", "read_enrolled"]

TLS_KEY_FILE = "tls.keys"
TLS_CERT_FILE = "tls.pem"
REQUEST_FILE = "request.json"
META_FILE = "cli.json"


def tls_store(directory: Path, *, passphrase: str | None, key_file: Path | None) -> Any:
    """The KeyStore of the user's TLS private key (same unlock as the agent's keys)."""
    from agents.keys import KeyStore

    return KeyStore(Path(directory) / TLS_KEY_FILE, passphrase=passphrase, key_file=key_file)


def user_transport(cert_pem: bytes, key_der: bytes, genesis: bytes) -> Any:
    """The ``tcp`` transport of a user speaking mutual TLS: its certificate and key, trusting
    the genesis's member organizations' TLS CAs (never a file)."""
    from core.ledger import parse_genesis

    from agents.org import key_to_pem
    from agents.tls import genesis_cas, tls_transport

    return tls_transport(cert_pem, key_to_pem(key_der), genesis_cas(parse_genesis(genesis).config))


@dataclass(frozen=True)
class Enrolled:
    """What ``user enroll`` left in a user directory."""

    dir: Path
    subject: str
    org: str
    manifest: Any  # agents.consortium.Manifest
    full: bool  # False: enrolled with --genesis --peer (one peer's address only)
    tls_cert: bytes | None


def read_enrolled(directory: Path, what: str) -> Enrolled:
    """The enrollment in ``directory``, else a one-line failure saying what to do."""
    from agents.client import KEY_FILE
    from agents.consortium import Manifest

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        fail(what, f"--dir {directory} is a file, not a directory", "give your key directory (e.g. ~/.emrshare)")
    if not (directory / KEY_FILE).exists():
        fail(what, f"no keys in {directory}",
             f"create them with `emrshare user init --dir {directory}`, then enroll with `emrshare user enroll`")
    enroll = (f"enroll first: `emrshare user enroll --dir {directory} --token FILE --manifest manifest.json` "
              "(your registrar gives the token, your organization the manifest)")
    try:
        meta = json.loads((directory / META_FILE).read_text())
        subject, org = meta["subject"], meta["org"]
        if not isinstance(subject, str) or not isinstance(org, str):
            raise ValueError("subject and org must be text")
    except FileNotFoundError:
        fail(what, f"{directory} holds keys but no enrollment", enroll)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(what, f"{directory / META_FILE} is unreadable ({exc})", enroll)
    try:
        manifest = Manifest.from_json((directory / "manifest.json").read_text())
    except FileNotFoundError:
        fail(what, f"{directory} holds no consortium manifest", enroll)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        fail(what, f"{directory / 'manifest.json'} is not a manifest ({exc})",
             f"save your organization's manifest again: `emrshare user enroll --dir {directory} "
             "--manifest manifest.json`")
    cert_path = directory / TLS_CERT_FILE
    return Enrolled(directory, subject, org, manifest, meta.get("manifest", "full") != "peer",
                    cert_path.read_bytes() if cert_path.exists() else None)
