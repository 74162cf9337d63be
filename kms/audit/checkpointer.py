"""Signed checkpoints in the background: at least one per second while entries arrive, one on shutdown.

Every ``interval`` seconds the thread reads the stored head; if the tree grew since the last checkpoint
it signs (size, root, time) with the OpenBao transit audit key (``TransitSigner``: ed25519, an explicit
key version that is also inside the signed message) and stores the checkpoint. ``close`` stops the thread
and signs the final head, so a clean stop leaves no unsigned tail. A signing failure (OpenBao down) is
logged and retried on the next tick: entries stay durable, they are only signed later.
"""

from __future__ import annotations

import base64
import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from kms.audit.checkpoint import Checkpoint, CheckpointSigner, parse_transit_signature, sign_checkpoint
from kms.audit.entry import format_time, parse_time
from kms.audit.errors import AuditError, KeyInvalid
from kms.audit.merkle import CompactRange
from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.storage.audit_ledger import insert_checkpoint, latest_checkpoint, read_head
from kms.storage.store import Store
from kms.vault import AUDIT_KEY_NAME, Transit

log = logging.getLogger("sovereign.audit")
DEFAULT_INTERVAL = 0.5


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
        insert_checkpoint(conn, cp)
    return cp


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit-checkpointer", daemon=True)
        self._thread.start()

    def checkpoint(self) -> Checkpoint | None:
        with self._lock:
            return checkpoint_now(self._store, self._signer, self._clock)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.checkpoint()
            except (KmsError, AuditError) as err:
                log.error("audit checkpoint not signed (retrying): %s", err)

    def close(self) -> Checkpoint | None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            return self.checkpoint()
        except (KmsError, AuditError) as err:
            log.error("final audit checkpoint not signed: %s; the next start signs the tail", err)
            return None
