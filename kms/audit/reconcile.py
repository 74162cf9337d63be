"""Reconciliation: every transit decrypt of the KEK made by the control plane's AppRole matches ledger
entries, and every ledger entry that names an OpenBao request id matches a decrypt.

Inputs are lines: OpenBao's file audit device log (JSON Lines, one ``request`` and one ``response`` object
per call) and the ledger's entries (canonical bytes, e.g. from an export). OpenBao HMACs secret values in
its log (tokens, ciphertexts, plaintexts) but not request ids, paths, the role name or the length of a
``batch_input`` list, which is all this needs. A batch decrypt is one OpenBao request id for all its
items: the ledger records the request id with each item's batch index and the batch size on the grant
(or on the deny entry of an item refused after its decrypt), so a request id matches when its entries
carry exactly the indices 0..n-1 of a batch of n, the size OpenBao logged. The custodian's recovery with
the local CLI (``dataset.recover``) is a single decrypt recorded the same way (index 0 of a batch of 1).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from kms.audit.entry import Entry, Kind
from kms.audit.errors import AuditError
from kms.errors import Code

# The entries that record a KEK decrypt: releases, and the custodian's recovery with the local CLI
# (``sovereign dataset decrypt``, a batch of one: index 0, size 1).
DECRYPT_KINDS = (Kind.RELEASE_GRANT, Kind.RELEASE_DENY, Kind.DATASET_RECOVER)


@dataclass(frozen=True)
class BaoDecrypt:
    request_id: str
    time: str
    batch_size: int
    path: str


@dataclass(frozen=True)
class Mismatch:
    request_id: str
    expected: int  # batch size OpenBao logged
    found: tuple[int, ...]  # ledger sequence numbers carrying the request id
    indices: tuple[int, ...]  # their batch indices


@dataclass
class ReconcileReport:
    decrypts: int = 0
    entries: int = 0
    matched: int = 0
    unmatched_decrypts: list[BaoDecrypt] = field(default_factory=list)  # no ledger entry at all
    mismatched: list[Mismatch] = field(default_factory=list)  # entries do not cover the batch exactly
    unmatched_entries: list[int] = field(default_factory=list)  # ledger seqs naming an unknown request id

    @property
    def ok(self) -> bool:
        return not (self.unmatched_decrypts or self.mismatched or self.unmatched_entries)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "decrypts": self.decrypts,
            "entries": self.entries,
            "matched": self.matched,
            "unmatched_decrypts": [d.__dict__ for d in self.unmatched_decrypts],
            "mismatched": [m.__dict__ for m in self.mismatched],
            "unmatched_entries": self.unmatched_entries,
        }


def bad_input(message: str) -> AuditError:
    return AuditError(message, code=Code.AUDIT_RECONCILE_INPUT_INVALID)


def not_a_bao_log(message: str) -> AuditError:
    return AuditError(f"not an OpenBao audit log: {message}", code=Code.AUDIT_RECONCILE_NOT_BAO_LOG)


def parse_bao_log(lines: Iterable[bytes | str], *, role_name: str, path: str) -> list[BaoDecrypt]:
    """The successful decrypts on ``path`` (e.g. transit/decrypt/sovereign-kek) by tokens of the AppRole
    ``role_name``, from the ``response`` records of a file audit device log."""
    out: list[BaoDecrypt] = []
    records = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise not_a_bao_log(f"line {number} is not JSON") from None
        if not _is_audit_record(record):
            raise not_a_bao_log(f"line {number} is not an OpenBao audit record")
        records += 1
        if record.get("type") != "response":
            continue
        request = record.get("request") or {}
        if request.get("path") != path or record.get("error"):
            continue
        auth = record.get("auth") or {}
        if (auth.get("metadata") or {}).get("role_name") != role_name:
            continue
        data = request.get("data") or {}
        batch = data.get("batch_input")
        size = len(batch) if isinstance(batch, list) else 1
        out.append(BaoDecrypt(str(request.get("id", "")), str(record.get("time", "")), size, path))
    if not records:
        raise not_a_bao_log("the file holds no OpenBao audit record")
    return out


def _is_audit_record(record: object) -> bool:
    """The shape every record of OpenBao's file audit device has: a request or response, its time and
    the request (path, id). Anything else means the file is not that log, and reconciling it would
    report "0 decrypts" as if nothing had happened."""
    return (
        isinstance(record, dict)
        and record.get("type") in ("request", "response")
        and isinstance(record.get("time"), str)
        and isinstance(record.get("request"), dict)
    )


@dataclass(frozen=True)
class _Held:
    seq: int
    index: int
    size: int


def _ledger_items(entries: Iterable[bytes]) -> tuple[int, dict[str, list[_Held]]]:
    by_request: dict[str, list[_Held]] = defaultdict(list)
    count = 0
    for canonical in entries:
        entry = Entry.decode(canonical)
        rid = entry.fields.get("bao_request_id")
        if entry.kind not in DECRYPT_KINDS or not isinstance(rid, str) or not rid:
            continue
        count += 1
        index, size = entry.fields.get("bao_batch_index"), entry.fields.get("bao_batch_size")
        by_request[rid].append(
            _Held(entry.seq, index if isinstance(index, int) else -1, size if isinstance(size, int) else -1)
        )
    return count, by_request


def reconcile(decrypts: Iterable[BaoDecrypt], entries: Iterable[bytes]) -> ReconcileReport:
    """Match OpenBao decrypts with ledger entries (canonical bytes) by request id and batch index."""
    report = ReconcileReport()
    report.entries, held = _ledger_items(entries)
    seen: set[str] = set()
    for d in decrypts:
        report.decrypts += 1
        seen.add(d.request_id)
        items = held.get(d.request_id)
        if not items:
            report.unmatched_decrypts.append(d)
            continue
        indices = tuple(sorted(i.index for i in items))
        if indices != tuple(range(d.batch_size)) or any(i.size != d.batch_size for i in items):
            report.mismatched.append(
                Mismatch(d.request_id, d.batch_size, tuple(i.seq for i in items), indices)
            )
            continue
        report.matched += 1
    report.unmatched_entries = sorted(i.seq for rid, items in held.items() if rid not in seen for i in items)
    return report
