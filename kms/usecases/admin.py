"""Operator use cases: nodes, keys, KEK, policy and collateral (served on the operator port).

Every change is applied atomically and recorded in the audit ledger before the call returns: node
changes and policy changes in the same transaction as the change; key, KEK and collateral changes (made
through OpenBao and the catalogue) right after they commit. Node changes are the transitions of
``kms.domain.registry``. Every mutating call takes ``actor``: the authenticated operator as a mapping
(``{"subject", "username", "roles"}``, see ``kms.audit.draft.operator_draft``); without one the actor
is the fixed identity ``LOCAL_OPERATOR`` (in-process callers such as tests and the dev harness).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attestation.store import ImportReport
from kms.audit.draft import Draft, operator_draft
from kms.audit.entry import Kind, Reason
from kms.clock import Clock
from kms.domain.catalogue import Catalogue, KeyKind, KeyRecord, KeyState, RewrapReport
from kms.domain.registry import (
    NodeChange,
    NodeRecord,
    NodeState,
    NodeStore,
    approve,
    new_lease,
    require_from,
    revoke,
    suspend,
)
from kms.errors import Code, KmsError
from kms.sql.audit_append import AuditLedger, append_entries
from kms.sql.nodes import SqlNodes, not_found
from kms.sql.provenance import lineage_exception_groups
from kms.sql.store import Store
from kms.usecases.attest import check_groups
from kms.usecases.policy_source import ActivePolicy, PolicySource, sha256_text
from kms.usecases.reappraisal import is_demotion, reappraise_stored, write_changes
from kms.usecases.verifier import EvidenceVerifier
from policies import Change, Verdict, appraise, claims_from_dict, parse_policy
from policies.errors import PolicyError

LOCAL_OPERATOR = "local-admin"
Actor = Mapping[str, Any]
LOCAL_ACTOR: Actor = {"subject": LOCAL_OPERATOR}
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_TEXT = 1024


@dataclass(frozen=True)
class PolicyChange:
    policy: ActivePolicy  # active after the call (unchanged on a dry run)
    nodes_checked: int
    suspended: tuple[Change, ...]
    dry_run: bool


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    size = DEFAULT_PAGE if page_size == 0 else min(page_size, MAX_PAGE)
    if page_token and (len(page_token) > 20 or not page_token.isdigit()):
        raise KmsError("page_token is not a token this server issued", code=Code.REQUEST_INVALID)
    return int(page_token or 0), size


def next_token(offset: int, size: int, got: int) -> str:
    return str(offset + size) if got == size else ""


def _no_exception(key_name: str, group: str) -> KmsError:
    return KmsError(
        f"no lineage exception lets group {group[:128]!r} read {key_name[:128]!r}",
        code=Code.REQUEST_INVALID,
        hint="the exceptions in force are the lineage.exception entries not withdrawn: sovereign audit query",
    )


def require_text(value: str, what: str, *, required: bool) -> str:
    if len(value.encode()) > MAX_TEXT or (required and not value):
        raise KmsError(
            f"{what} must be {'1' if required else '0'}-{MAX_TEXT} bytes", code=Code.REQUEST_INVALID
        )
    return value


class Admin:
    def __init__(
        self,
        store: Store,
        catalogue: Catalogue,
        policies: PolicySource,
        verifier: EvidenceVerifier,
        clock: Clock,
        *,
        audit: AuditLedger | None = None,
        nodes: NodeStore | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._nodes = nodes or SqlNodes(store, audit.append if audit is not None else None)
        self._catalogue = catalogue
        self._policies = policies
        self._verifier = verifier
        self._clock = clock

    # -- nodes

    def list_nodes(
        self, states: Sequence[NodeState], page_size: int, page_token: str
    ) -> tuple[list[NodeRecord], str]:
        offset, size = page_bounds(page_size, page_token)
        rows = self._nodes.list(states, offset, size)
        return rows, next_token(offset, size, len(rows))

    def get_node(self, node_id: str) -> NodeRecord:
        node = self._nodes.get(node_id)
        if node is None:
            raise not_found(node_id)
        return node

    # -- audit

    def _record(
        self, actor: Actor | None, kind: Kind, fields: Mapping[str, Any], reasons: Sequence[Reason] = ()
    ) -> None:
        if self._audit is not None:
            self._audit.record(operator_draft(actor or LOCAL_ACTOR, kind, fields, reasons=reasons))

    def check_approval(self, node_id: str, groups: Sequence[str], comment: str) -> tuple[str, ...]:
        """Every check of ``approve_node`` without changing anything (a held approval is checked when
        it is proposed and again when it is applied); returns the groups it would grant."""
        granted = _approval_groups(groups, comment)
        check_approvable(self.get_node(node_id), granted, self._policies.active(), self._clock())
        return granted

    def approve_node(
        self, node_id: str, groups: Sequence[str], comment: str, *, actor: Actor | None = None
    ) -> NodeRecord:
        """Attest a pending or suspended node into ``groups``: only groups its stored claims match
        under the active policy, and only while those claims (its latest verified evidence) pass it."""
        granted = _approval_groups(groups, comment)
        policy = self._policies.active()
        lease_seconds = policy.policy.release.lease_seconds
        now = self._clock()

        def transition(node: NodeRecord) -> NodeChange:
            check_approvable(node, granted, policy, now)
            lease = new_lease(now, lease_seconds)
            return approve(node, groups=granted, policy_version=policy.version, lease=lease, now=now)

        def entry(old: NodeRecord, new: NodeRecord) -> Draft:
            fields = {"node_id": node_id, "old_state": old.state.value, "new_state": new.state.value,
                      "groups": list(granted), "comment": comment, "policy_version": policy.version}  # fmt: skip
            return operator_draft(actor or LOCAL_ACTOR, Kind.NODE_APPROVE, fields)

        # only while the policy the claims were checked against is still the active one
        return self._nodes.apply(node_id, transition, entry=entry, policy_version=policy.version)

    def revoke_node(self, node_id: str, reason: str, *, actor: Actor | None = None) -> NodeRecord:
        require_text(reason, "reason", required=True)
        now = self._clock()
        return self._nodes.apply(
            node_id,
            lambda node: revoke(node, reason, now),
            entry=self._bar_entry(actor, Kind.NODE_REVOKE, Code.NODE_REVOKED_BY_OPERATOR, reason),
        )

    def suspend_node(self, node_id: str, reason: str, *, actor: Actor | None = None) -> NodeRecord:
        require_text(reason, "reason", required=True)
        now = self._clock()
        return self._nodes.apply(
            node_id,
            lambda node: suspend(node, reason, now),
            entry=self._bar_entry(actor, Kind.NODE_SUSPEND, Code.NODE_SUSPENDED_BY_OPERATOR, reason),
        )

    @staticmethod
    def _bar_entry(
        actor: Actor | None, kind: Kind, code: Code, reason: str
    ) -> Callable[[NodeRecord, NodeRecord], Draft]:
        def entry(old: NodeRecord, new: NodeRecord) -> Draft:
            fields = {"node_id": new.node_id, "old_state": old.state.value, "new_state": new.state.value}
            return operator_draft(actor or LOCAL_ACTOR, kind, fields, reasons=[Reason(code.value, reason)])

        return entry

    # -- keys

    def _key_changed(
        self, record: KeyRecord, kind: Kind, actor: Actor | None, reasons: Sequence[Reason] = (), **extra: Any
    ) -> KeyRecord:
        fields = {"key_name": record.name, "key_kind": record.kind.value, "key_version": record.current_version,
                  "state": record.state.value, **extra}  # fmt: skip
        self._record(actor, kind, fields, reasons)
        return record

    def create_key(self, name: str, kind: KeyKind, *, actor: Actor | None = None) -> KeyRecord:
        return self._key_changed(self._catalogue.create(name, kind), Kind.KEY_CREATE, actor)

    def describe_key(self, name: str) -> KeyRecord:
        return self._catalogue.describe(name)

    def rotate_key(self, name: str, *, actor: Actor | None = None) -> KeyRecord:
        return self._key_changed(self._catalogue.rotate(name), Kind.KEY_ROTATE, actor)

    def disable_key(self, name: str, reason: str, *, actor: Actor | None = None) -> KeyRecord:
        require_text(reason, "reason", required=True)
        why = [Reason(Code.KEY_DISABLED.value, reason)]
        return self._key_changed(self._catalogue.disable(name), Kind.KEY_DISABLE, actor, why)

    def enable_key(self, name: str, comment: str, *, actor: Actor | None = None) -> KeyRecord:
        require_text(comment, "comment", required=False)
        return self._key_changed(self._catalogue.enable(name), Kind.KEY_ENABLE, actor, comment=comment)

    def destroy_key(
        self, name: str, confirm_name: str, reason: str, *, actor: Actor | None = None
    ) -> KeyRecord:
        require_text(reason, "reason", required=True)
        if confirm_name != name:
            raise KmsError("confirm_name must repeat the key name exactly", code=Code.REQUEST_INVALID)
        why = [Reason(Code.KEY_DESTROYED.value, reason)]
        return self._key_changed(self._catalogue.destroy(name), Kind.KEY_DESTROY, actor, why)

    def list_keys(
        self, kind: KeyKind | None, state: KeyState | None, page_size: int, page_token: str
    ) -> tuple[list[KeyRecord], str]:
        offset, size = page_bounds(page_size, page_token)
        keys = [
            k
            for k in self._catalogue.list()
            if (kind is None or k.kind is kind)
            and (k.state is state if state is not None else k.state is not KeyState.DESTROYED)
        ]
        page = keys[offset : offset + size]
        return page, next_token(offset, size, len(page))

    def rotate_kek(self, comment: str, *, actor: Actor | None = None) -> tuple[int, RewrapReport]:
        require_text(comment, "comment", required=False)
        version = self._catalogue.rotate_kek()
        report = self._catalogue.rewrap_all(version)
        fields = {"kek_version": version, "count": report.rewrapped, "comment": comment}
        self._record(actor, Kind.KEK_ROTATE, fields)
        return version, report

    # -- policy

    def get_policy(self) -> ActivePolicy:
        return self._policies.active()

    # -- lineage exceptions (policies.lineage; always two-person, kms.oidc.two_person.ALWAYS_HELD)

    def check_lineage_exception(self, key_name: str, group: str, reason: str) -> str:
        require_text(reason, "reason", required=True)
        if self.describe_key(key_name).kind is not KeyKind.MODEL:
            raise KmsError(f"{key_name} is not a model key", code=Code.REQUEST_INVALID)
        if group not in self.get_policy().policy.groups():
            raise KmsError(f"{group[:128]!r} is not a group of the active policy", code=Code.REQUEST_INVALID)
        return f"let group {group} read model key {key_name} despite its lineage"

    def grant_lineage_exception(
        self, key_name: str, group: str, reason: str, *, actor: Actor | None = None
    ) -> tuple[str, str]:
        """Record the exception (a ``lineage.exception`` entry: what lineage-restricted releases read)."""
        self.check_lineage_exception(key_name, group, reason)
        fields = {"key_name": key_name, "groups": [group], "comment": reason}
        self._record(actor, Kind.LINEAGE_EXCEPTION, fields)
        return key_name, group

    def withdraw_lineage_exception(
        self, key_name: str, group: str, reason: str, *, actor: Actor | None = None
    ) -> tuple[str, str]:
        """Withdraw the exception: a ``lineage.exception.withdraw`` entry, written in the transaction that
        finds the exception in force (an exception that is not in force is refused, REQUEST_INVALID).
        It only tightens, so it is not held for a second operator unless the two-person settings say so."""
        self.check_lineage_withdrawal(key_name, group, reason)
        fields = {"key_name": key_name, "groups": [group], "comment": reason}
        with self._store.transaction() as conn:
            if group not in lineage_exception_groups(conn, key_name):
                raise _no_exception(key_name, group)
            append_entries(
                conn,
                [operator_draft(actor or LOCAL_ACTOR, Kind.LINEAGE_EXCEPTION_WITHDRAW, fields)],
                self._clock(),
            )
        return key_name, group

    def check_lineage_withdrawal(self, key_name: str, group: str, reason: str) -> str:
        require_text(reason, "reason", required=True)
        with self._store.reader() as conn:
            if group not in lineage_exception_groups(conn, key_name):
                raise _no_exception(key_name, group)
        return f"withdraw the lineage exception that lets group {group} read model key {key_name}"

    def put_policy(
        self,
        toml: str,
        expected_version: int,
        dry_run: bool,
        by: str = LOCAL_OPERATOR,
        *,
        actor: Actor | None = None,
    ) -> PolicyChange:
        policy = parse_policy(toml, "PutPolicy")
        now = self._clock()
        if dry_run:
            active = self._policies.active()
            if active.version != expected_version:
                raise KmsError(
                    f"the active policy is version {active.version}, not {expected_version}",
                    code=Code.POLICY_VERSION_CONFLICT,
                )
            with self._store.reader() as conn:
                found = reappraise_stored(conn, policy, now)
            return PolicyChange(
                active, found.checked, tuple(c for c in found.changes if is_demotion(c)), True
            )
        who = actor or {"subject": by}
        old_digest = self._policies.active().row.sha256
        with self._store.transaction() as conn:
            version = self._policies.append(conn, toml, expected_version, by, now)
            found = reappraise_stored(conn, policy, now)
            checked, changes = found.checked, found.changes
            write_changes(conn, changes, now)
            if self._audit is not None:
                fields = {"old_policy_digest": old_digest, "new_policy_digest": sha256_text(toml),
                          "policy_version": version, "count": checked}  # fmt: skip
                drafts = [operator_draft(who, Kind.POLICY_CHANGE, fields)]
                drafts += [_suspension_draft(who, c, version) for c in changes if is_demotion(c)]
                self._audit.append(conn, drafts)
        return PolicyChange(
            self._policies.active(), checked, tuple(c for c in changes if is_demotion(c)), False
        )

    # -- collateral

    def import_collateral(self, bundle: bytes, *, actor: Actor | None = None) -> ImportReport:
        """A signed bundle when collateral signers are configured, else loose items (kms.usecases.verifier)."""
        report = self._verifier.import_collateral(bundle, self._clock())
        fields = {
            "count": len(report.added),
            "collateral_kind": [str(r["kind"]) for r in report.added],
            "collateral_digest": [str(r["sha256"]) for r in report.added],
        }
        self._record(actor, Kind.COLLATERAL_IMPORT, fields)
        return report


def _approval_groups(groups: Sequence[str], comment: str) -> tuple[str, ...]:
    granted = check_groups(groups)
    require_text(comment, "comment", required=False)
    if not granted:
        raise KmsError("approve needs at least one group", code=Code.REQUEST_INVALID)
    return granted


def check_approvable(node: NodeRecord, groups: Sequence[str], policy: ActivePolicy, now: datetime) -> None:
    """A node may be approved into ``groups`` only from PENDING or SUSPENDED, only while its stored
    claims (its latest verified evidence) pass ``policy``, and only into groups those claims match:
    an operator decides whether a node that the policy admits gets in, never what it may have."""
    require_from(node, (NodeState.PENDING, NodeState.SUSPENDED), "approve")
    appraisal = appraise(policy.policy, claims_from_dict(dict(node.claims)), now=now)
    if appraisal.verdict is Verdict.REJECTED:
        codes = ", ".join(str(r.code) for r in appraisal.reasons)
        raise KmsError(
            f"node {node.node_id}'s latest verified evidence fails policy v{policy.version} ({codes})",
            code=Code.NODE_EVIDENCE_FAILS_POLICY,
        )
    outside = [g for g in groups if g not in appraisal.groups]
    if outside:
        raise KmsError(
            f"groups [{', '.join(outside)}] are not open to node {node.node_id} under policy "
            f"v{policy.version}; its claims match [{', '.join(appraisal.groups)}]",
            code=Code.NODE_GROUPS_NOT_ELIGIBLE,
        )


def _suspension_draft(actor: Actor, change: Change, version: int) -> Draft:
    reasons = [Reason(Code.NODE_SUSPENDED_BY_POLICY.value, f"re-appraised under policy v{version}")]
    reasons += [Reason(str(r.code), str(r.message)) for r in change.reasons]
    fields = {"node_id": change.node_id, "new_state": NodeState.SUSPENDED.value, "policy_version": version}
    return operator_draft(actor, Kind.NODE_SUSPEND, fields, reasons=reasons)


__all__ = ["LOCAL_ACTOR", "LOCAL_OPERATOR", "Actor", "Admin", "PolicyChange", "PolicyError"]
