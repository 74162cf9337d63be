"""The soak's invariant checker on doctored histories: a clean history yields no violation; a grant without
an entry, a grant after revocation or suspension, a duplicate request id, a superseded policy version, a
refused-but-granted request, an unexplained decrypt, a tampered ledger each yield their own violation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kms.audit.checkpoint import LocalSigner, load_audit_keys
from kms.audit.entry import Decision, Entry, Kind, Reason
from kms.audit.export import ExportBuilder
from sovereign.soak.checker import CheckReport, ViolationKind, check, parse_bao_time
from sovereign.soak.history import ClientHistory, Received, Refusal, Window

ROLE = "sovereign-control-plane"
PATH = "transit/decrypt/sovereign-kek"
T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
SIGNER = LocalSigner(key_id="sovereign-audit")
KEYS = load_audit_keys(SIGNER.public_key_bytes())


@dataclass
class World:
    """A small ledger being written, OpenBao's log of it, and what the clients saw."""

    entries: list[Entry] = field(default_factory=list)
    bao: list[dict[str, Any]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)

    def at(self) -> datetime:
        return T0 + timedelta(seconds=len(self.entries))

    def add(self, kind: Kind, fields: dict[str, Any], decision: Decision = Decision.NONE) -> Entry:
        entry = Entry.create(
            len(self.entries), self.at(), kind, actor="system", decision=decision, fields=fields
        )
        self.entries.append(entry)
        return entry

    def decrypt(self, bao_id: str, when: datetime | None = None) -> None:
        stamp = (when or self.at()).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"
        self.bao.append(
            {
                "type": "response",
                "time": stamp,
                "auth": {"metadata": {"role_name": ROLE}},
                "request": {"id": bao_id, "path": PATH, "data": {"ciphertext": "hmac-sha256:x"}},
            }
        )

    def grant(
        self, node: str, rid: str, *, policy: int = 1, bao_id: str | None = None, told: bool = True
    ) -> Entry:
        bao_id = bao_id or f"bao-{rid}"
        self.decrypt(bao_id)
        fields = {
            "node_id": node, "key_name": "dataset/train", "key_version": 1, "purpose": "read",
            "request_id": rid, "bao_request_id": bao_id, "bao_batch_index": 0, "bao_batch_size": 1,
            "lease_expiry": 0, "policy_version": policy, "rule": "trainers",
        }  # fmt: skip
        entry = self.add(Kind.RELEASE_GRANT, fields, Decision.GRANT)
        if told:
            self.received.append(Received(self.at(), node, rid, "dataset/train", 1, "read", entry.seq))
        return entry

    def judge(self, *, tamper: Callable[[list[bytes]], None] | None = None) -> CheckReport:
        builder = ExportBuilder(SIGNER)
        body = [builder.add(e.encode()) for e in self.entries]
        body.append(builder.checkpoint(self.at()))
        lines = [builder.header(), *body]
        if tamper is not None:
            tamper(lines)
        bao_lines = [json.dumps(r).encode() + b"\n" for r in self.bao]
        history = ClientHistory(self.received, self.refusals, self.windows)
        return check(history, lines, KEYS, bao_lines, role_name=ROLE, decrypt_path=PATH)


def kinds(report: CheckReport) -> list[ViolationKind]:
    return [v.kind for v in report.violations]


def clean() -> World:
    w = World()
    w.add(Kind.SERVER_START, {"policy_version": 1, "count": 0})
    w.add(Kind.REGISTRATION, {"node_id": "n1", "state": "ATTESTED", "policy_version": 1})
    w.add(Kind.REGISTRATION, {"node_id": "n2", "state": "ATTESTED", "policy_version": 1})
    w.grant("n1", "aa01")
    w.grant("n2", "aa02")
    w.add(Kind.NODE_SUSPEND, {"node_id": "n2", "new_state": "suspended"})
    w.add(Kind.NODE_APPROVE, {"node_id": "n2", "new_state": "attested"})
    w.grant("n2", "aa03")
    w.add(Kind.POLICY_CHANGE, {"policy_version": 2, "count": 2})
    w.grant("n1", "aa04", policy=2)
    w.add(Kind.NODE_REVOKE, {"node_id": "n1", "new_state": "revoked"})
    w.refusals.append(Refusal(w.at(), "n1", "aa05", "dataset/train", "RELEASE_NODE_NOT_ATTESTED", True))
    w.refusals.append(Refusal(w.at(), "n2", "aa06", "dataset/train", "DEADLINE_EXCEEDED", False))
    w.grant("n2", "aa06", policy=2, told=False)  # granted after the client had given up: allowed
    return w


def test_a_clean_history_has_no_violation() -> None:
    report = clean().judge()
    assert report.violations == []
    assert (report.grants, report.received, report.decrypts, report.matched_decrypts) == (5, 4, 5, 5)


def test_a_key_received_without_a_grant_entry_is_flagged() -> None:
    w = clean()
    w.received.append(Received(w.at(), "n2", "ffff", "dataset/train", 1, "read", 3))
    report = w.judge()
    assert kinds(report) == [ViolationKind.GRANT_WITHOUT_ENTRY]
    assert report.violations[0].request_id == "ffff"


def test_a_grant_entry_that_differs_from_what_the_client_got_is_flagged() -> None:
    w = clean()
    w.received[0] = replace(w.received[0], key_version=2)
    assert kinds(w.judge()) == [ViolationKind.GRANT_ENTRY_MISMATCH]


def test_a_grant_after_revocation_is_flagged() -> None:
    w = clean()
    w.grant("n1", "bb01", policy=2)
    report = w.judge()
    assert kinds(report) == [ViolationKind.GRANT_AFTER_REVOCATION]
    assert report.violations[0].seq == len(w.entries) - 1


def _step_clock(w: World, seconds: float) -> None:
    """Rewrite the last entry's time as if the server's clock had been stepped by ``seconds``."""
    last = w.entries[-1]
    w.entries[-1] = replace(
        last, time=(w.at() + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


def test_a_grant_after_revocation_is_judged_by_sequence_not_by_time() -> None:
    """The server's clock stepped back 90 s between the revocation and the grant: the grant's time is
    before the revocation's, its sequence after; still a violation. Times running back are counted."""
    w = clean()
    w.grant("n1", "bb02", policy=2)
    _step_clock(w, -90)
    report = w.judge()
    assert kinds(report) == [ViolationKind.GRANT_AFTER_REVOCATION]
    assert (report.time_regressions, report.max_time_regression_s) >= (1, 80.0)


def test_times_running_backwards_alone_are_no_violation() -> None:
    w = clean()
    w.grant("n2", "bb03", policy=2)
    _step_clock(w, -90)
    w.grant("n2", "bb04", policy=2)
    report = w.judge()
    assert report.violations == [] and report.time_regressions >= 1
    assert clean().judge().time_regressions == 0


def test_a_grant_after_an_unlifted_suspension_is_flagged() -> None:
    w = clean()
    w.add(Kind.NODE_SUSPEND, {"node_id": "n2", "new_state": "suspended", "policy_version": 2})
    w.grant("n2", "bb02", policy=2)
    assert kinds(w.judge()) == [ViolationKind.GRANT_AFTER_SUSPENSION]
    w.add(Kind.REGISTRATION, {"node_id": "n2", "state": "ATTESTED", "policy_version": 2})  # renewed: lifted
    w.grant("n2", "bb03", policy=2)
    assert kinds(w.judge()) == [ViolationKind.GRANT_AFTER_SUSPENSION]


def test_a_duplicate_request_id_is_flagged() -> None:
    w = clean()
    w.grant("n2", "aa03", policy=2, bao_id="bao-again", told=False)
    report = w.judge()
    assert kinds(report) == [ViolationKind.DUPLICATE_GRANT]
    assert report.violations[0].request_id == "aa03"


def test_a_grant_under_a_superseded_policy_version_is_flagged() -> None:
    w = clean()
    w.grant("n2", "cc01", policy=1)
    assert kinds(w.judge()) == [ViolationKind.GRANT_UNDER_SUPERSEDED_POLICY]


def test_a_server_start_under_a_newer_policy_supersedes_too() -> None:
    w = clean()
    w.add(Kind.SERVER_START, {"policy_version": 3, "count": 0})
    w.grant("n2", "cc02", policy=2)
    assert kinds(w.judge()) == [ViolationKind.GRANT_UNDER_SUPERSEDED_POLICY]


def test_a_request_refused_with_a_code_and_granted_is_flagged() -> None:
    w = clean()
    w.refusals.append(Refusal(w.at(), "n2", "aa03", "dataset/train", "RELEASE_POLICY_CHANGED", True))
    assert kinds(w.judge()) == [ViolationKind.REFUSED_BUT_GRANTED]


def test_an_unexplained_decrypt_is_flagged() -> None:
    w = clean()
    w.decrypt("bao-outside")
    report = w.judge()
    assert kinds(report) == [ViolationKind.UNEXPLAINED_DECRYPT]
    assert "bao-outside" in report.violations[0].detail


def test_a_decrypt_inside_a_crash_window_is_an_orphan_not_a_violation() -> None:
    w = clean()
    when = w.at()
    w.decrypt("bao-killed", when)
    w.windows.append(Window("serve-kill", when - timedelta(seconds=1), when + timedelta(seconds=1)))
    report = w.judge()
    assert report.violations == []
    assert [o["request_id"] for o in report.orphan_decrypts] == ["bao-killed"]
    w.windows[0] = Window("serve-kill", when + timedelta(seconds=1), when + timedelta(seconds=2))
    assert kinds(w.judge()) == [ViolationKind.UNEXPLAINED_DECRYPT]


def test_a_decrypt_whose_commit_failed_is_explained_by_its_denial_and_unexplained_without_it() -> None:
    """The 30-minute soak's case: ``serve`` stopped (SIGSTOP: no fault window) between a decrypt and its
    commit; the commit failed on resume. The server now records a denial naming the decrypt."""
    w = clean()
    w.decrypt("bao-stalled")
    assert kinds(w.judge()) == [ViolationKind.UNEXPLAINED_DECRYPT]
    fields = {
        "node_id": "n2", "key_name": "dataset/train", "purpose": "read", "request_id": "aa07",
        "bao_request_id": "bao-stalled", "bao_batch_index": 0, "bao_batch_size": 1,
    }  # fmt: skip
    reason = Reason("STORAGE_ERROR", "the key was decrypted but its grant could not be committed: ...")
    w.entries.append(
        Entry.create(len(w.entries), w.at(), Kind.RELEASE_DENY, actor="node:n2", decision=Decision.DENY,
                     reasons=[reason], fields=fields)
    )  # fmt: skip
    report = w.judge()
    assert report.violations == [] and report.orphan_decrypts == []
    assert report.matched_decrypts == report.decrypts
    assert report.decrypt_denials == {"STORAGE_ERROR": 1}


def test_a_grant_naming_an_unknown_openbao_request_is_flagged() -> None:
    w = clean()
    w.bao.pop()  # OpenBao never logged the last decrypt
    assert kinds(w.judge()) == [ViolationKind.ENTRY_WITHOUT_DECRYPT]


def test_a_tampered_ledger_fails_offline_verification() -> None:
    def drop_an_entry(lines: list[bytes]) -> None:
        del lines[3]

    report = clean().judge(tamper=drop_an_entry)
    assert ViolationKind.LEDGER_INVALID in kinds(report)
    assert "AUDIT_SEQUENCE_GAP" in report.violations[0].detail


def test_openbao_times_keep_microseconds() -> None:
    assert parse_bao_time("2026-12-03T08:00:01.123456789Z") == T0 + timedelta(seconds=1, microseconds=123456)
    assert parse_bao_time("not a time") is None


def test_during_a_run_the_ledger_side_is_judged_without_openbao() -> None:
    w = clean()
    w.decrypt("bao-after-the-cut")  # its entry would come after the export's checkpoint
    w.grant("n1", "dd01", policy=2)  # after n1's revocation
    builder = ExportBuilder(SIGNER)
    body = [builder.add(e.encode()) for e in w.entries]
    body.append(builder.checkpoint(w.at()))
    history = ClientHistory(w.received, w.refusals, [])
    report = check(history, [builder.header(), *body], KEYS, None, role_name=ROLE, decrypt_path=PATH)
    assert kinds(report) == [ViolationKind.GRANT_AFTER_REVOCATION]
    assert report.decrypts == 0
