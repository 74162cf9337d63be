"""The soak's invariant checker, Jepsen-style: it judges a run from the clients' own records, the exported
audit ledger and OpenBao's audit log, and returns every violation it finds, typed.

Invariants:

* the ledger export verifies offline with the audit public key (``kms.audit.verify``);
* every key a client received has exactly one ``release.grant`` entry with its request id, and that
  entry names the same node, key, version and sequence number the client was told;
* no request id is granted twice;
* no grant to a node after its ``node.revoke`` entry, or after a ``node.suspend`` entry that no later
  ``node.approve`` or attested registration lifted;
* no grant whose policy version was superseded (a ``policy.change`` or ``server.start`` with a higher
  version) before the grant was committed;
* no grant for a request a client saw refused with a server decision code;
* all of the above by ledger sequence, never by entry time: a server's clock may step back (the soak's
  clock-step fault) or two replicas' clocks differ, so times may run backwards (counted, not judged);
* OpenBao's audit log reconciles with the ledger (``kms.audit.reconcile``): every KEK decrypt by the
  control plane's AppRole is matched by grant/deny entries. A decrypt whose grant transaction failed
  (full filesystem, a stall that timed out the writer turn) is explained by the ``release.deny`` the
  server records for it once the database takes it (``kms.usecases.unrecorded``); those denials are
  counted by code. A decrypt without any entry is a violation unless it falls in a window in which the
  control plane could not record at all (SIGKILL or SIGABRT before the commit or before that denial was
  written; a full filesystem until the end of the run): those are reported as orphans (the key never
  left the process, whose reply follows the commit).

Pure: no I/O, no clock; the driver reads the files and passes their lines in.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kms.audit.checkpoint import AuditKeys
from kms.audit.entry import Entry, Kind
from kms.audit.errors import AuditError
from kms.audit.export import ENTRY_PREFIX
from kms.audit.reconcile import BaoDecrypt, parse_bao_log, reconcile
from kms.audit.verify import verify_export
from sovereign.soak.history import ClientHistory, Window


class ViolationKind(StrEnum):
    LEDGER_INVALID = "LEDGER_INVALID"
    GRANT_WITHOUT_ENTRY = "GRANT_WITHOUT_ENTRY"
    GRANT_ENTRY_MISMATCH = "GRANT_ENTRY_MISMATCH"
    DUPLICATE_GRANT = "DUPLICATE_GRANT"
    GRANT_AFTER_REVOCATION = "GRANT_AFTER_REVOCATION"
    GRANT_AFTER_SUSPENSION = "GRANT_AFTER_SUSPENSION"
    GRANT_UNDER_SUPERSEDED_POLICY = "GRANT_UNDER_SUPERSEDED_POLICY"
    REFUSED_BUT_GRANTED = "REFUSED_BUT_GRANTED"
    UNEXPLAINED_DECRYPT = "UNEXPLAINED_DECRYPT"
    RECONCILE_MISMATCH = "RECONCILE_MISMATCH"
    ENTRY_WITHOUT_DECRYPT = "ENTRY_WITHOUT_DECRYPT"
    # found by the driver, outside this pure module, reported with the same type
    KEY_MATERIAL_IN_FILE = "KEY_MATERIAL_IN_FILE"
    RESOURCE_BOUND_EXCEEDED = "RESOURCE_BOUND_EXCEEDED"
    NOT_RECOVERED = "NOT_RECOVERED"


@dataclass(frozen=True)
class Violation:
    kind: ViolationKind
    detail: str
    request_id: str = ""
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "detail": self.detail, "request_id": self.request_id, "seq": self.seq}


@dataclass
class CheckReport:
    violations: list[Violation] = field(default_factory=list)
    entries: int = 0
    grants: int = 0
    received: int = 0
    decrypts: int = 0
    matched_decrypts: int = 0
    orphan_decrypts: list[dict[str, str]] = field(default_factory=list)  # request id, time, window kind
    # release.deny entries that name an OpenBao decrypt, by reason code: refusals at commit
    # (RELEASE_NODE_CHANGED, ...) and grants whose transaction failed after the decrypt (STORAGE_ERROR, ...)
    decrypt_denials: dict[str, int] = field(default_factory=dict)
    # entries whose time is earlier than an entry before them (a server clock stepped back, or two
    # replicas' clocks apart): not a violation; order is judged by sequence number, never by time
    time_regressions: int = 0
    max_time_regression_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "violations": [v.to_dict() for v in self.violations],
            "entries": self.entries,
            "grants": self.grants,
            "received": self.received,
            "decrypts": self.decrypts,
            "matched_decrypts": self.matched_decrypts,
            "orphan_decrypts": self.orphan_decrypts,
            "orphans_by_window": _count(o["window"] for o in self.orphan_decrypts),
            "decrypt_denials": self.decrypt_denials,
            "time_regressions": self.time_regressions,
            "max_time_regression_s": self.max_time_regression_s,
        }


def export_entries(lines: Iterable[bytes]) -> list[Entry]:
    """The entries of an export's lines (those that decode; the verifier judges the rest)."""
    out: list[Entry] = []
    for line in lines:
        if line.startswith(ENTRY_PREFIX) and line.endswith(b"}\n"):
            try:
                out.append(Entry.decode(line[len(ENTRY_PREFIX) : -2]))
            except AuditError:
                continue
    return out


def check(
    history: ClientHistory,
    export_lines: Sequence[bytes],
    keys: AuditKeys,
    bao_log_lines: Sequence[bytes] | None,
    *,
    role_name: str,
    decrypt_path: str,
) -> CheckReport:
    """Judge a run. ``bao_log_lines`` None: the ledger-side invariants only (during a run, when OpenBao's
    log already holds decrypts whose entries come after the export's last checkpoint)."""
    report = CheckReport(received=len(history.received))
    try:
        verify_export(iter(export_lines), keys)
    except AuditError as err:
        report.violations.append(Violation(ViolationKind.LEDGER_INVALID, f"{err.code.value}: {err.message}"))
    entries = export_entries(export_lines)
    report.entries = len(entries)
    grants = [e for e in entries if e.kind is Kind.RELEASE_GRANT]
    report.grants = len(grants)
    report.violations += _client_receipts(history, grants)
    report.violations += _duplicates(grants)
    report.violations += _ledger_order(entries)
    report.time_regressions, report.max_time_regression_s = time_regressions(entries)
    report.decrypt_denials = _count(
        e.reasons[0].code
        for e in entries
        if e.kind is Kind.RELEASE_DENY and _text(e, "bao_request_id") and e.reasons
    )
    if bao_log_lines is not None:
        decrypts = parse_bao_log(bao_log_lines, role_name=role_name, path=decrypt_path)
        report.violations += _reconciliation(decrypts, entries, history.orphan_windows, report)
    return report


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def time_regressions(entries: Sequence[Entry], *, at_least: float = 1.0) -> tuple[int, float]:
    """How many entries (in sequence order) carry a time more than ``at_least`` seconds earlier than the
    latest time before them, and the largest such step back in seconds."""
    count, largest = 0, 0.0
    latest: datetime | None = None
    for e in sorted(entries, key=lambda x: x.seq):
        when = parse_bao_time(e.time)
        if when is None:
            continue
        if latest is not None and (latest - when).total_seconds() > at_least:
            count += 1
            largest = max(largest, (latest - when).total_seconds())
        latest = when if latest is None else max(latest, when)
    return count, round(largest, 3)


def _text(entry: Entry, name: str) -> str:
    value = entry.fields.get(name)
    return value if isinstance(value, str) else ""


def _number(entry: Entry, name: str) -> int:
    value = entry.fields.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _client_receipts(history: ClientHistory, grants: Sequence[Entry]) -> list[Violation]:
    by_request: dict[str, list[Entry]] = defaultdict(list)
    for g in grants:
        by_request[_text(g, "request_id")].append(g)
    out: list[Violation] = []
    for got in history.received:
        found = by_request.get(got.request_id, [])
        if not found:
            out.append(
                Violation(
                    ViolationKind.GRANT_WITHOUT_ENTRY,
                    f"node {got.node_id} received {got.key_name} v{got.key_version} (told sequence "
                    f"{got.audit_sequence}) but no release.grant entry carries its request id",
                    got.request_id,
                )
            )
            continue
        if len(found) > 1:
            continue  # reported once by _duplicates
        g = found[0]
        told = (got.node_id, got.key_name, got.key_version, got.audit_sequence)
        recorded = (_text(g, "node_id"), _text(g, "key_name"), _number(g, "key_version"), g.seq)
        if told != recorded:
            out.append(
                Violation(
                    ViolationKind.GRANT_ENTRY_MISMATCH,
                    f"the client got {told}, the grant entry records {recorded}",
                    got.request_id,
                    g.seq,
                )
            )
    for refused in history.refusals:
        if refused.coded and refused.request_id in by_request:
            seqs = [g.seq for g in by_request[refused.request_id]]
            out.append(
                Violation(
                    ViolationKind.REFUSED_BUT_GRANTED,
                    f"the client was refused with {refused.code} yet entries {seqs} grant the request",
                    refused.request_id,
                    seqs[0],
                )
            )
    return out


def _duplicates(grants: Sequence[Entry]) -> list[Violation]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for g in grants:
        seqs[_text(g, "request_id")].append(g.seq)
    return [
        Violation(ViolationKind.DUPLICATE_GRANT, f"request id granted by entries {found}", rid, found[1])
        for rid, found in seqs.items()
        if len(found) > 1
    ]


def _attested(entry: Entry) -> bool:
    return _text(entry, "state").lower() == "attested"


def _ledger_order(entries: Sequence[Entry]) -> list[Violation]:
    """Walk the ledger in sequence order: node bars and the newest policy version at each grant."""
    revoked: dict[str, int] = {}
    suspended: dict[str, int] = {}
    newest_policy = 0
    newest_at = -1
    out: list[Violation] = []
    for e in sorted(entries, key=lambda x: x.seq):
        node = _text(e, "node_id")
        if e.kind is Kind.NODE_REVOKE:
            revoked.setdefault(node, e.seq)
        elif e.kind is Kind.NODE_SUSPEND:
            suspended[node] = e.seq
        elif e.kind is Kind.NODE_APPROVE or (e.kind in (Kind.REGISTRATION, Kind.NODE_RENEW) and _attested(e)):
            suspended.pop(node, None)
        elif e.kind in (Kind.POLICY_CHANGE, Kind.SERVER_START):
            version = _number(e, "policy_version")
            if version > newest_policy:
                newest_policy, newest_at = version, e.seq
        elif e.kind is Kind.RELEASE_GRANT:
            rid = _text(e, "request_id")
            if node in revoked:
                out.append(
                    Violation(
                        ViolationKind.GRANT_AFTER_REVOCATION,
                        f"grant to node {node} after its revocation (entry {revoked[node]})",
                        rid,
                        e.seq,
                    )
                )
            elif node in suspended:
                out.append(
                    Violation(
                        ViolationKind.GRANT_AFTER_SUSPENSION,
                        f"grant to node {node} after its suspension (entry {suspended[node]})",
                        rid,
                        e.seq,
                    )
                )
            version = _number(e, "policy_version")
            if version < newest_policy:
                out.append(
                    Violation(
                        ViolationKind.GRANT_UNDER_SUPERSEDED_POLICY,
                        f"grant under policy v{version}, superseded by v{newest_policy} at entry {newest_at}",
                        rid,
                        e.seq,
                    )
                )
    return out


_FRACTION = re.compile(r"\.(\d{6})\d*")


def parse_bao_time(text: str) -> datetime | None:
    """OpenBao's RFC 3339 times carry nanoseconds; Python keeps microseconds."""
    try:
        when = datetime.fromisoformat(_FRACTION.sub(r".\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _reconciliation(
    decrypts: Sequence[BaoDecrypt], entries: Sequence[Entry], windows: Sequence[Window], report: CheckReport
) -> list[Violation]:
    result = reconcile(decrypts, (e.encode() for e in entries))
    report.decrypts, report.matched_decrypts = result.decrypts, result.matched
    out: list[Violation] = []
    for d in result.unmatched_decrypts:
        when = parse_bao_time(d.time)
        window = next((w for w in windows if when is not None and w.holds(when)), None)
        if window is not None:
            report.orphan_decrypts.append({"request_id": d.request_id, "time": d.time, "window": window.kind})
            continue
        out.append(
            Violation(
                ViolationKind.UNEXPLAINED_DECRYPT,
                f"OpenBao decrypt {d.request_id} at {d.time} ({d.batch_size} item(s)) has no ledger entry "
                "and falls in no fault window",
            )
        )
    out += [
        Violation(
            ViolationKind.RECONCILE_MISMATCH,
            f"OpenBao decrypt {m.request_id} of {m.expected} item(s) vs entries {list(m.found)} "
            f"with batch indices {list(m.indices)}",
        )
        for m in result.mismatched
    ]
    out += [
        Violation(
            ViolationKind.ENTRY_WITHOUT_DECRYPT, "the entry names an OpenBao request id not in its log", seq=s
        )
        for s in result.unmatched_entries
    ]
    return out
