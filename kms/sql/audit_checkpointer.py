"""Signed checkpoints in the background: at least one per second while entries arrive, one on shutdown.

Every ``interval`` seconds the thread reads the stored head; if the tree grew since the last checkpoint
it signs (size, root, time) with the OpenBao transit audit key (``TransitSigner``: ed25519, an explicit
key version that is also inside the signed message) and stores the checkpoint. ``close`` stops the thread
and signs the final head, so a clean stop leaves no unsigned tail. A signing failure (OpenBao down) is
logged and retried on the next tick: entries stay durable, they are only signed later.

Several ``sovereign serve`` processes on one PostgreSQL database: one signs at a time. ``SignerLease``
holds a session advisory lock on a dedicated connection; the process holding it signs, the others check on
every tick and take over when the holder stops or its connection dies (the server drops the lock with the
session). Safety does not rest on the lease: a checkpoint is stored only if the latest checkpoint is still
the one it was built on (checked under the writer lock), so checkpoint sizes and times strictly increase
even if two signers overlap for a moment. SQLite: one server per file, the lease is always held.
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from kms.audit.checkpoint import Checkpoint, CheckpointSigner, parse_transit_signature, sign_checkpoint
from kms.audit.entry import format_time, parse_time
from kms.audit.errors import AuditError, KeyInvalid
from kms.audit.merkle import CompactRange
from kms.clock import Clock
from kms.domain.transit import AUDIT_KEY_NAME, Transit
from kms.errors import Code, KmsError
from kms.sql.audit_ledger import insert_checkpoint, latest_checkpoint, read_head
from kms.sql.store import Store

log = logging.getLogger("sovereign.audit")
DEFAULT_INTERVAL = 0.5
# pg_try_advisory_lock key (session level) held by the one replica that signs checkpoints
SIGNER_LOCK = 0x3C1E_59F0_2A6B_7D42


def signer_failed(message: str) -> AuditError:
    return AuditError(message, code=Code.AUDIT_SIGNER_FAILED)


class TransitSigner:
    """``CheckpointSigner`` over OpenBao transit (the ``sovereign-audit`` ed25519 key).

    The key version is fixed when the signer is made (the latest one then) and every signature is asked
    for with ``key_version`` set to it, because the version is part of the signed message."""

    def __init__(self, transit: Transit, key_version: int | None = None) -> None:
        self._transit = transit
        self._key_id = str(getattr(transit, "audit_key", AUDIT_KEY_NAME))
        try:
            public = transit.public_key(key_version)
        except KmsError as err:
            raise signer_failed(f"cannot read the audit key {self._key_id}: {err.message}") from None
        self._version = public.key_version
        self._public = public.raw

    def __repr__(self) -> str:
        return f"TransitSigner(key_id={self._key_id!r}, version={self._version})"

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def key_version(self) -> int:
        return self._version

    def public_key_bytes(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        call = getattr(self._transit, "call", None)
        try:
            if call is None:  # a Transit without raw calls (fakes): sign with the latest, check the version
                sig = self._transit.sign(message)
                text = sig.value
            else:
                mount = self._transit.settings.mount  # type: ignore[attr-defined]
                resp: Any = call(
                    "sign",
                    lambda c: c.secrets.transit.sign_data(
                        self._key_id,
                        hash_input=base64.b64encode(message).decode(),
                        key_version=self._version,
                        mount_point=mount,
                    ),
                )
                text = str((resp.get("data") or {}).get("signature", ""))
            parsed = parse_transit_signature(text)
        except (KmsError, KeyInvalid) as err:
            raise signer_failed(f"signing a checkpoint with {self._key_id} failed: {err.message}") from None
        if parsed.version != self._version:
            raise signer_failed(f"OpenBao signed with v{parsed.version}, the message names v{self._version}")
        return parsed.value


def next_time(now: datetime, last: Checkpoint | None) -> str:
    """Checkpoint times strictly increase (the verifier refuses anything else): a clock that did not move
    since the last checkpoint gives the last time plus one microsecond."""
    if last is None:
        return format_time(now)
    floor = parse_time(last.time) + timedelta(microseconds=1)
    return format_time(max(now, floor))


def checkpoint_now(store: Store, signer: CheckpointSigner, clock: Clock) -> Checkpoint | None:
    """Sign the stored head if it grew since the last checkpoint; returns the new checkpoint."""
    with store.reader() as conn:
        head = read_head(conn)
        last = latest_checkpoint(conn)
    if head.size == (last.size if last is not None else 0):
        return None
    root = CompactRange(head.size, head.frontier).root()
    cp = sign_checkpoint(signer, head.size, root, next_time(clock(), last))
    with store.transaction() as conn:
        if latest_checkpoint(conn) != last:  # another replica signed meanwhile: its checkpoint stands
            return None
        insert_checkpoint(conn, cp)
    return cp


_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
_PING = text("SELECT 1")


class SignerLease:
    """Whether this process signs checkpoints (see the module docstring). Not thread-safe: one owner."""

    def __init__(self, store: Store, key: int = SIGNER_LOCK) -> None:
        self._store = store
        self._key = key
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return not self._store.is_postgresql or self._conn is not None

    def acquire(self) -> bool:
        """Take the lease if free, or check that the connection holding it is alive; True if held."""
        if not self._store.is_postgresql:
            return True
        try:
            if self._conn is not None:
                self._conn.execute(_PING)
                return True
            conn = self._store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn  # until we know: _drop closes it for good if the attempt fails
            if conn.execute(_TRY_LOCK, {"key": self._key}).scalar():
                return True
            self._conn = None
            conn.close()
            return False
        except SQLAlchemyError as exc:
            log.warning("audit signer lease lost: %s", str(exc)[:200])
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(_UNLOCK, {"key": self._key})
            self._conn.close()
        except SQLAlchemyError:
            self._drop()
        self._conn = None

    def _drop(self) -> None:
        # never hand a connection that may still hold the lock back to the pool: close it for good
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except SQLAlchemyError:
                pass
        self._conn = None


class Checkpointer:
    """The background signer. ``close()`` signs the final head (after the server.stop entry)."""

    def __init__(
        self, store: Store, signer: CheckpointSigner, clock: Clock, *, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self._store = store
        self._signer = signer
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._lease = SignerLease(store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit-checkpointer", daemon=True)
        self._thread.start()

    def checkpoint(self) -> Checkpoint | None:
        with self._lock:
            return checkpoint_now(self._store, self._signer, self._clock)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._lease.acquire():
                    self.checkpoint()
            except (KmsError, AuditError) as err:
                log.error("audit checkpoint not signed (retrying): %s", err)

    @property
    def signing(self) -> bool:
        """True while this process holds the signer lease."""
        return self._lease.held

    def close(self) -> Checkpoint | None:
        """Stop; sign the final head if this process holds (or can take) the lease, then let it go.
        Otherwise the replica holding it signs the tail on its next tick."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            return self.checkpoint() if self._lease.acquire() else None
        except (KmsError, AuditError) as err:
            log.error("final audit checkpoint not signed: %s; the next start signs the tail", err)
            return None
        finally:
            self._lease.release()
