"""Challenge nonces (DESIGN.md, Protocol 1): 32 random bytes, single use, short expiry, kept server-side.

``consume`` commits the nonce as used *before* anything else happens, so a nonce is spent by the first
Register/Renew that presents it, even one whose evidence then fails. Rows stay for one more lifetime after
expiry, so a late replay is still reported as a replay or an expiry rather than as unknown.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.sql.nonces import SqlNonces
from kms.sql.store import Store

NONCE_BYTES = 32
DEFAULT_TTL = timedelta(seconds=60)
LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class NonceError(KmsError):
    """A presented nonce is unknown, spent, expired or was issued for another name."""

    default_code = Code.NONCE_UNKNOWN


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: datetime


def require_label(value: str, what: str) -> str:
    """RFC 1123 label (1-63 bytes of [a-z0-9-], no leading/trailing '-')."""
    if not isinstance(value, str) or not LABEL.fullmatch(value):
        raise KmsError(
            f"{what} {str(value)[:70]!r} is not an RFC 1123 label",
            code=Code.REQUEST_INVALID,
            hint="use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
        )
    return value


class Nonces:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        ttl: timedelta = DEFAULT_TTL,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._sql = SqlNonces(store)
        self._clock = clock
        self._ttl = ttl
        self._random = random

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    def issue(self, node_name: str) -> Challenge:
        require_label(node_name, "node name")
        now = self._clock()
        nonce = self._random(NONCE_BYTES)
        expires = now + self._ttl
        self._sql.insert(nonce.hex(), node_name, now, expires)
        self._sql.purge(now - self._ttl)
        return Challenge(nonce, expires)

    def consume(self, nonce: bytes, node_name: str) -> None:
        """Spend ``nonce`` (committed), then raise ``NonceError`` unless it was valid for ``node_name``."""
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise KmsError(f"nonce must be {NONCE_BYTES} bytes", code=Code.REQUEST_INVALID)
        now = self._clock()
        row = self._sql.consume(nonce.hex(), now)
        if row is None:
            raise NonceError(
                "the nonce was not issued by this server (or is long expired)",
                code=Code.NONCE_UNKNOWN,
                hint="call Challenge and use its nonce within its lifetime",
            )
        if row.consumed_at is not None:
            raise NonceError(
                f"the nonce was already used at {row.consumed_at.isoformat()}",
                code=Code.NONCE_REPLAYED,
                hint="every Register/Renew needs a fresh nonce from Challenge",
            )
        if now >= row.expires_at:
            raise NonceError(
                f"the nonce expired at {row.expires_at.isoformat()}",
                code=Code.NONCE_EXPIRED,
                hint="call Challenge again and register within the nonce lifetime",
            )
        if row.node_name != node_name:
            raise NonceError(
                f"the nonce was issued for node name {row.node_name!r}, not {node_name!r}",
                code=Code.NONCE_NAME_MISMATCH,
                hint="use the same node name for Challenge and Register",
            )
