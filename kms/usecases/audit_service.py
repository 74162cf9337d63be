"""The ledger's life in a server process: check on start, ``server.start``, checkpoints, ``server.stop``.

``start_audit`` runs before the process serves anything: ``reader.recover`` checks (or rebuilds) the
stored tree against the entries and the last signed checkpoint and refuses to start on a corrupt ledger;
then the ``server.start`` entry is written and, in the primary process, the checkpointer starts
(replicas append entries, the primary signs them). ``AuditPlane.stop`` writes ``server.stop`` and the
final checkpoint; call it after the request batchers stopped and before the group commit closes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kms.audit.draft import SYSTEM, Draft
from kms.audit.entry import Kind
from kms.clock import Clock
from kms.domain.transit import Transit
from kms.sql.audit_append import AuditLedger
from kms.sql.audit_checkpointer import Checkpointer, TransitSigner
from kms.sql.audit_reader import LedgerReader, Recovery, recover
from kms.sql.group_commit import GroupCommit
from kms.sql.store import Store

log = logging.getLogger("sovereign.audit")


@dataclass
class AuditPlane:
    ledger: AuditLedger
    reader: LedgerReader
    recovery: Recovery
    checkpointer: Checkpointer | None
    address: str
    signer: TransitSigner | None = None  # the primary's audit key (None on replicas)

    def stop(self) -> None:
        try:
            self.ledger.record(Draft(Kind.SERVER_STOP, SYSTEM, fields={"address": self.address}))
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()


def start_audit(
    store: Store,
    commit: GroupCommit,
    transit: Transit,
    clock: Clock,
    *,
    address: str,
    policy_version: int,
    sign: bool = True,
    interval: float = 0.5,
) -> AuditPlane:
    """Recover, record ``server.start``, start signing (``sign``: the primary process only)."""
    recovery = recover(store)
    signer = TransitSigner(transit) if sign else None
    ledger = AuditLedger(store, commit, clock)
    fields: dict[str, object] = {"address": address, "policy_version": policy_version, "count": recovery.size}
    if signer is not None:
        fields["audit_key_version"] = signer.key_version
    ledger.record(Draft(Kind.SERVER_START, SYSTEM, fields=fields))
    if recovery.rebuilt:
        log.warning("audit ledger: subtree hashes rebuilt from %d entries", recovery.size)
    checkpointer = Checkpointer(store, signer, clock, interval=interval) if signer is not None else None
    reader = LedgerReader(store)
    reader.warm()  # the tree's upper levels, which every proof reads
    return AuditPlane(ledger, reader, recovery, checkpointer, address, signer)
