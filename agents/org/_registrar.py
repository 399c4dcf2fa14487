"""The registrar's side of enrollment: a token file bound to the subject's enrolling key.

A token file (JSON, :class:`TokenFile`) carries the enrollment token
(:mod:`core.enrollment`, signed by the organization's registrar key) and what it
authorizes: subject, organization, attributes, the enrolling public key, the
expiry. It is not secret on its own (it enrolls only the holder of that key, once)
but it names a person: hand it over as you would the person's details.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from core import ecdsa, enrollment
from core.errors import DecodeError

from agents.org._material import OrgDir, OrgError, read_versioned

TOKEN_FILE_VERSION = 1


@dataclass(frozen=True)
class TokenFile:
    org: str
    subject: str
    attributes: dict[str, Any]
    enroll_key: bytes
    expires: int
    token: bytes

    def to_json(self) -> str:
        return json.dumps({"version": TOKEN_FILE_VERSION, "org": self.org, "subject": self.subject,
                           "attributes": self.attributes, "enroll_key": self.enroll_key.hex(),
                           "expires": self.expires, "token": self.token.hex()}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "token file") -> "TokenFile":
        try:
            d = read_versioned(text, TOKEN_FILE_VERSION, "an enrollment token file")
            out = cls(d["org"], d["subject"], d["attributes"], bytes.fromhex(d["enroll_key"]), d["expires"],
                      bytes.fromhex(d["token"]))
            if not (isinstance(out.org, str) and isinstance(out.subject, str) and isinstance(out.attributes, dict)
                    and type(out.expires) is int):
                raise ValueError("org, subject, attributes or expires has the wrong type")
            enrollment.EnrollmentToken.from_bytes(out.token)
        except (ValueError, KeyError, TypeError, DecodeError) as exc:
            raise OrgError(f"reading {source}: {exc}; ask the registrar for a new token") from None
        return out


def parse_enroll_key(text: str) -> bytes:
    """A compressed ECDSA public key from hex or an ``enroll:<hex>`` id (what `emrshare user init` prints)."""
    raw = text.strip().removeprefix("enroll:")
    try:
        key = bytes.fromhex(raw)
        ecdsa.decode_public_key(key)
    except (ValueError, DecodeError):
        raise OrgError("reading the enrolling key: not a compressed ECDSA public key in hex; give what "
                       "`emrshare user init` printed") from None
    return key


def issue_token(org_dir: OrgDir, *, subject: str, attributes: dict[str, Any], enroll_key: bytes,
                expires: int) -> TokenFile:
    """A token for one enrollment of ``subject`` with ``attributes`` from ``enroll_key``,
    valid until ``expires`` (unix seconds), signed with the organization's registrar key."""
    org = org_dir.profile().org
    registrar = org_dir.registrar_key()
    try:
        token = enrollment.issue(registrar, subject=subject, org=org, attributes=attributes, enroll_key=enroll_key,
                                 expires=expires, token_id=secrets.token_bytes(enrollment.TOKEN_ID_SIZE))
    except ValueError as exc:
        raise OrgError(f"issuing a token for {subject}: {exc}; give attributes as k=v pairs") from None
    return TokenFile(org, subject, dict(attributes), enroll_key, expires, token.to_bytes())
