"""Operator use cases: nodes, keys, KEK, policy and collateral (served on the local admin socket only).

Every change is applied atomically and recorded in the audit ledger before the call returns: node
changes and policy changes in the same transaction as the change; key, KEK and collateral changes (made
through OpenBao and the catalogue) right after they commit. Every mutating call takes ``actor``: the
authenticated operator as a mapping (``{"subject", "username", "roles"}``, see
``kms.audit.ledger.operator_draft``); without one the actor is the fixed identity ``LOCAL_OPERATOR``
(whoever can open the 0600 admin socket).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from attestation.store import ImportReport
from kms.attest import check_groups, granted_groups
from kms.audit.entry import Kind, Reason
from kms.audit.ledger import AuditLedger, Draft, operator_draft
from kms.catalogue import Catalogue, KeyKind, KeyRecord, KeyState, RewrapReport
from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.policy_source import ActivePolicy, PolicySource, sha256_text
from kms.registry import (
    FROM_POLICY_STATE,
    POLICY_STATE,
    NodeRecord,
    NodeState,
    canonical_json,
    lease_values,
    new_lease,
    operator_suspended,
    reason_dicts,
    require_from,
)
from kms.storage.nodes import SqlNodes, load, load_all, not_found, set_values
from kms.storage.policy_versions import active_version
from kms.storage.store import Store
from kms.verifier import EvidenceVerifier
from policies import Change, Verdict, appraise, claims_from_dict, parse_policy, reappraise
from policies import NodeState as PolicyNodeState
from policies.errors import Code as PolicyCode
from policies.errors import PolicyError
from policies.errors import Reason as PolicyReason

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
    ) -> None:
        self._store = store
        self._audit = audit
        self._nodes = SqlNodes(store)
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

    def _change_node(
        self,
        node_id: str,
        fn: Callable[[NodeRecord], dict[str, Any]],
        entry: Callable[[NodeRecord, NodeRecord], Draft],
        *,
        policy_version: int | None = None,
    ) -> NodeRecord:
        """Read, check and update a node and append its audit entry in one transaction; with
        ``policy_version``, only while that policy version is still the active one."""
        with self._store.transaction() as conn:
            if policy_version is not None and active_version(conn) != policy_version:
                raise KmsError(
                    f"the active policy changed from version {policy_version} while this was checked",
                    code=Code.POLICY_VERSION_CONFLICT,
                    hint="retry: the node is checked again under the new policy",
                )
            current = load(conn, node_id)
            if current is None:
                raise not_found(node_id)
            set_values(conn, node_id, fn(current))
            updated = load(conn, node_id)
            assert updated is not None
            if self._audit is not None:
                self._audit.append(conn, [entry(current, updated)])
        return updated

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

        def change(node: NodeRecord) -> dict[str, Any]:
            check_approvable(node, granted, policy, now)
            return {
                "state": NodeState.ATTESTED.value,
                "groups_json": canonical_json(list(granted)),
                "reasons_json": "[]",
                "policy_version": policy.version,
                "state_changed_at": now,
                **lease_values(new_lease(now, lease_seconds)),
            }

        def entry(old: NodeRecord, new: NodeRecord) -> Draft:
            fields = {"node_id": node_id, "old_state": old.state.value, "new_state": new.state.value,
                      "groups": list(granted), "comment": comment, "policy_version": policy.version}  # fmt: skip
            return operator_draft(actor or LOCAL_ACTOR, Kind.NODE_APPROVE, fields)

        return self._change_node(node_id, change, entry, policy_version=policy.version)

    def revoke_node(self, node_id: str, reason: str, *, actor: Actor | None = None) -> NodeRecord:
        return self._bar(node_id, reason, NodeState.REVOKED, Code.NODE_REVOKED_BY_OPERATOR, actor)

    def suspend_node(self, node_id: str, reason: str, *, actor: Actor | None = None) -> NodeRecord:
        return self._bar(node_id, reason, NodeState.SUSPENDED, Code.NODE_SUSPENDED_BY_OPERATOR, actor)

    def _bar(
        self, node_id: str, reason: str, state: NodeState, code: Code, actor: Actor | None
    ) -> NodeRecord:
        require_text(reason, "reason", required=True)
        now = self._clock()
        allowed = (NodeState.PENDING, NodeState.ATTESTED, NodeState.SUSPENDED)

        def change(node: NodeRecord) -> dict[str, Any]:
            require_from(node, allowed, "revoke" if state is NodeState.REVOKED else "suspend")
            reasons = [{"code": code.value, "message": reason, "hint": ""}]
            if state is NodeState.SUSPENDED:
                if operator_suspended(node):
                    raise KmsError(
                        f"node {node.node_id} is already suspended by an operator",
                        code=Code.NODE_TRANSITION_INVALID,
                        hint="see its reasons with GetNode; ApproveNode lifts the suspension",
                    )
                # over a policy suspension its reasons stay; from now on only an operator lifts it
                reasons += [dict(r) for r in node.reasons]
            return {
                "state": state.value,
                "reasons_json": canonical_json(reasons),
                "state_changed_at": now,
                **lease_values(None),
            }

        kind = Kind.NODE_REVOKE if state is NodeState.REVOKED else Kind.NODE_SUSPEND

        def entry(old: NodeRecord, new: NodeRecord) -> Draft:
            fields = {"node_id": node_id, "old_state": old.state.value, "new_state": new.state.value}
            return operator_draft(actor or LOCAL_ACTOR, kind, fields, reasons=[Reason(code.value, reason)])

        return self._change_node(node_id, change, entry)

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
            nodes = self._nodes.list((), 0, 1 << 30)
            checked, changes = _reappraisal(policy, nodes, now)
            return PolicyChange(active, checked, tuple(c for c in changes if _is_demotion(c)), True)
        who = actor or {"subject": by}
        old_digest = self._policies.active().row.sha256
        with self._store.transaction() as conn:
            version = self._policies.append(conn, toml, expected_version, by, now)
            nodes = load_all(conn)
            checked, changes = _reappraisal(policy, nodes, now)
            for change in changes:
                _apply(conn, change, now)
            if self._audit is not None:
                fields = {"old_policy_digest": old_digest, "new_policy_digest": sha256_text(toml),
                          "policy_version": version, "count": checked}  # fmt: skip
                drafts = [operator_draft(who, Kind.POLICY_CHANGE, fields)]
                drafts += [_suspension_draft(who, c, version) for c in changes if _is_demotion(c)]
                self._audit.append(conn, drafts)
        return PolicyChange(
            self._policies.active(), checked, tuple(c for c in changes if _is_demotion(c)), False
        )

    # -- collateral

    def import_collateral(self, bundle: bytes, *, actor: Actor | None = None) -> ImportReport:
        """A signed bundle when collateral signers are configured, else loose items (kms.verifier)."""
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
        codes = ", ".join(str(getattr(r.code, "value", r.code)) for r in appraisal.reasons)
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


def _reappraisal(policy: Any, nodes: Sequence[NodeRecord], now: datetime) -> tuple[int, list[Change]]:
    """Re-appraise every live node; operator suspensions are never lifted by a policy change."""
    live = [n for n in nodes if n.state is not NodeState.REVOKED]
    inputs = [(n.node_id, claims_from_dict(dict(n.claims)), POLICY_STATE[n.state]) for n in live]
    by_id = {n.node_id: n for n in live}
    changes = []
    for change in reappraise(policy, inputs, now):
        node = by_id[change.node_id]
        if operator_suspended(node) and not _is_demotion(change):
            continue
        # as at registration: of the groups it is eligible for, only those the node asked for
        changes.append(
            dataclasses.replace(change, groups=granted_groups(node.requested_groups, change.groups))
        )
    changed = {c.node_id for c in changes}
    changes += [
        narrowed
        for n in live
        if n.state is NodeState.ATTESTED and n.node_id not in changed
        for narrowed in [_narrowed(policy, n, now)]
        if narrowed is not None
    ]
    return len(live), changes


def _narrowed(policy: Any, node: NodeRecord, now: datetime) -> Change | None:
    """An attested node that still passes keeps only the groups its claims match under the new
    policy; with none left it is suspended until it renews (or an operator approves it anew)."""
    eligible = appraise(policy, claims_from_dict(dict(node.claims)), now=now).groups
    kept = tuple(g for g in node.groups if g in eligible)
    if kept == node.groups:
        return None
    if kept:
        return Change(node.node_id, PolicyNodeState.ATTESTED, PolicyNodeState.ATTESTED, kept, ())
    why = PolicyReason(
        PolicyCode.POLICY_MEASUREMENT_NOT_ALLOWED,
        f"its image is in none of its groups [{', '.join(node.groups)}] under the new policy "
        f"(it matches [{', '.join(eligible)}])",
    )
    return Change(node.node_id, PolicyNodeState.ATTESTED, PolicyNodeState.SUSPENDED, (), (why,))


def _suspension_draft(actor: Actor, change: Change, version: int) -> Draft:
    reasons = [Reason(Code.NODE_SUSPENDED_BY_POLICY.value, f"re-appraised under policy v{version}")]
    reasons += [Reason(str(getattr(r.code, "value", r.code)), str(r.message)) for r in change.reasons]
    fields = {"node_id": change.node_id, "new_state": NodeState.SUSPENDED.value, "policy_version": version}
    return operator_draft(actor, Kind.NODE_SUSPEND, fields, reasons=reasons)


def _is_demotion(change: Change) -> bool:
    return change.new_state.value in ("SUSPENDED", "REJECTED")


def _apply(conn: Connection, change: Change, now: datetime) -> None:
    demoted = _is_demotion(change)
    state = NodeState.SUSPENDED if demoted else FROM_POLICY_STATE[change.new_state.value]
    reasons = reason_dicts(change.reasons)
    if demoted:
        reasons = [
            {"code": Code.NODE_SUSPENDED_BY_POLICY.value, "message": "a policy change re-appraised the "
             "stored claims and they no longer pass", "hint": "fix the node and Renew"},
            *reasons,
        ]  # fmt: skip
    values: dict[str, Any] = {"state": state.value, "reasons_json": canonical_json(reasons)}
    if change.new_state is not change.old_state:
        values["state_changed_at"] = now
    if demoted:
        values.update(lease_values(None))
    else:
        values["groups_json"] = canonical_json(list(change.groups))
    set_values(conn, change.node_id, values)


__all__ = ["LOCAL_ACTOR", "LOCAL_OPERATOR", "Actor", "Admin", "PolicyChange", "PolicyError"]
