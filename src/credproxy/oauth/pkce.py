"""Proof Key for Code Exchange and the ``state`` value (RFC 7636 section 4, S256 only).

The verifier never leaves the host: only the challenge goes into the URL the
user opens. ``plain`` is not offered; a provider that cannot do S256 is not
safe to log in to from a shared machine.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Final

VERIFIER_BYTES: Final = 64
"""64 random bytes give an 86-character verifier, inside the 43..128 range of section 4.1."""
STATE_BYTES: Final = 32
CHALLENGE_METHOD: Final = "S256"


def new_verifier() -> str:
    return secrets.token_urlsafe(VERIFIER_BYTES)


def challenge_s256(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(verifier))) without padding (section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    return secrets.token_urlsafe(STATE_BYTES)


@dataclass(frozen=True, slots=True)
class PkcePair:
    verifier: str = field(repr=False)
    challenge: str

    @classmethod
    def generate(cls) -> PkcePair:
        verifier = new_verifier()
        return cls(verifier, challenge_s256(verifier))
