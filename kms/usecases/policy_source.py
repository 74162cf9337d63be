"""The active policy, stored versioned in the database so every replica sees the same one.

The policy file from the configuration only seeds an empty database (version 1); afterwards policy
changes go through ``Admin.PutPolicy``. Parsed policies are cached by version; each request asks the
database for the active version number only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.sql import Connection
from kms.sql.policy_versions import PolicyRow, SqlPolicies, active_version
from kms.sql.store import Store
from policies import Policy, parse_policy

log = logging.getLogger("sovereign.policy")


@dataclass(frozen=True)
class ActivePolicy:
    version: int
    policy: Policy
    row: PolicyRow


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PolicySource:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._sql = SqlPolicies(store)
        self._store = store
        self._clock = clock
        self._cache: ActivePolicy | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def seed(self, toml: str, source: str, by: str = "config") -> int:
        """Install ``toml`` as version 1 if no policy is stored yet; returns the active version."""
        parse_policy(toml, source)  # refuse to start with a broken policy file
        with self._store.transaction() as conn:
            if active_version(conn) == 0:
                self._sql.append(conn, PolicyRow(1, toml, sha256_text(toml), self._clock(), by))
        active = self.active()
        if active.row.sha256 != sha256_text(toml):
            log.warning(
                "policy file %s differs from the stored active policy v%d, which stays in force; "
                "change policy with: sovereign admin policy put %s --expected-version %d",
                source,
                active.version,
                source,
                active.version,
            )
        return active.version

    def active(self, *, max_age: float = 0.0) -> ActivePolicy:
        """The active policy; with ``max_age`` the version check may be up to that many seconds old
        (only for callers that re-check the version when they commit, like key release)."""
        cached = self._cache
        if cached is not None and max_age > 0 and time.monotonic() - self._checked < max_age:
            return cached
        version = self._sql.active_version()
        self._checked = time.monotonic()
        if cached is not None and cached.version == version:
            return cached
        return self._load(version)

    def _load(self, version: int) -> ActivePolicy:
        row = self._sql.get(version) if version else None
        if row is None:
            raise KmsError(
                "no policy is stored",
                code=Code.SERVER_CONFIG_INVALID,
                hint="start the server with --policy FILE to seed the first policy version",
            )
        with self._lock:
            active = ActivePolicy(version, parse_policy(row.toml, f"policy v{version}"), row)
            self._cache = active
        return active

    def append(self, conn: Connection, toml: str, expected_version: int, by: str, now: datetime) -> int:
        """Inside the caller's transaction: store ``toml`` as the next version if ``expected_version``
        is still the active one (optimistic concurrency); returns the new version."""
        current = active_version(conn)
        if current != expected_version:
            raise KmsError(
                f"the active policy is version {current}, not {expected_version}",
                code=Code.POLICY_VERSION_CONFLICT,
                hint="fetch the policy again, reapply your edit and retry",
            )
        self._sql.append(conn, PolicyRow(current + 1, toml, sha256_text(toml), now, by))
        return current + 1
