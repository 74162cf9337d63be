"""Key changes made with the local CLI (``sovereign key ...`` on the control plane's database) are
appended to the audit ledger like the Admin RPCs' (same kinds and fields), with the operator named
``local:<OS user>``: the ledger stays complete even when the control plane is bypassed.

The entry is appended right after the change commits (as the server's group commit does); the head
row's write lock serialises it with a running server's appends, so sequence numbers stay gap-free."""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kms.audit.draft import operator_draft
from kms.audit.entry import Decision, Kind, Reason
from kms.domain.catalogue import KeyRecord
from kms.sql.audit_append import append_entries
from kms.sql.store import Store


def local_actor() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return {"subject": f"local:{user}", "username": user}


def record_local(store: Store, kind: Kind, fields: Mapping[str, Any], reasons: Sequence[Reason] = ()) -> int:
    """Append one operator entry for a change the local CLI made; returns its sequence number."""
    draft = operator_draft(local_actor(), kind, fields, Decision.NONE, reasons)
    with store.transaction() as conn:
        return append_entries(conn, [draft], datetime.now(UTC))[0]


def key_fields(record: KeyRecord) -> dict[str, Any]:
    """The fields ``kms.usecases.admin.Admin`` records for a key change."""
    return {
        "key_name": record.name,
        "key_kind": record.kind.value,
        "key_version": record.current_version,
        "state": record.state.value,
    }
