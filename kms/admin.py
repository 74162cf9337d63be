"""Operator use cases: nodes, keys, KEK, policy and collateral (served on the local admin socket only).

Every change is applied atomically. Until operator authentication exists, the acting operator is the
fixed identity ``LOCAL_OPERATOR`` (whoever can open the 0600 admin socket).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from attestation.collateral import classify
from attestation.store import ImportReport
from kms.attest import check_groups
from kms.catalogue import Catalogue, KeyKind, KeyRecord, KeyState, RewrapReport
from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.policy_source import ActivePolicy, PolicySource
from kms.registry import (
    FROM_POLICY_STATE,
    POLICY_STATE,
    NodeRecord,
    NodeState,
    canonical_json,
    lease_values,
    new_lease,
    reason_dicts,
    require_from,
)
from kms.storage.nodes import SqlNodes, load_all, not_found, set_values
from kms.storage.store import Store
from kms.verifier import EvidenceVerifier
from policies import Change, claims_from_dict, parse_policy, reappraise
from policies.errors import PolicyError

LOCAL_OPERATOR = "local-admin"
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
    ) -> None:
        self._store = store
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

    def approve_node(self, node_id: str, groups: Sequence[str], comment: str) -> NodeRecord:
        granted = check_groups(groups)
        require_text(comment, "comment", required=False)
        if not granted:
            raise KmsError("approve needs at least one group", code=Code.REQUEST_INVALID)
        lease_seconds = self._policies.active().policy.release.lease_seconds
        now = self._clock()

        def change(node: NodeRecord) -> dict[str, Any]:
            require_from(node, (NodeState.PENDING, NodeState.SUSPENDED), "approve")
            return {
                "state": NodeState.ATTESTED.value,
                "groups_json": canonical_json(list(granted)),
                "reasons_json": "[]",
                "state_changed_at": now,
                **lease_values(new_lease(now, lease_seconds)),
            }

        return self._nodes.change(node_id, change)

    def revoke_node(self, node_id: str, reason: str) -> NodeRecord:
        return self._bar(node_id, reason, NodeState.REVOKED, Code.NODE_REVOKED_BY_OPERATOR)

    def suspend_node(self, node_id: str, reason: str) -> NodeRecord:
        return self._bar(node_id, reason, NodeState.SUSPENDED, Code.NODE_SUSPENDED_BY_OPERATOR)

    def _bar(self, node_id: str, reason: str, state: NodeState, code: Code) -> NodeRecord:
        require_text(reason, "reason", required=True)
        now = self._clock()
        allowed = (
            (NodeState.PENDING, NodeState.ATTESTED, NodeState.SUSPENDED)
            if state is NodeState.REVOKED
            else (NodeState.PENDING, NodeState.ATTESTED)
        )

        def change(node: NodeRecord) -> dict[str, Any]:
            require_from(node, allowed, "revoke" if state is NodeState.REVOKED else "suspend")
            reasons = [{"code": code.value, "message": reason, "hint": ""}]
            return {
                "state": state.value,
                "reasons_json": canonical_json(reasons),
                "state_changed_at": now,
                **lease_values(None),
            }

        return self._nodes.change(node_id, change)

    # -- keys

    def create_key(self, name: str, kind: KeyKind) -> KeyRecord:
        return self._catalogue.create(name, kind)

    def rotate_key(self, name: str) -> KeyRecord:
        return self._catalogue.rotate(name)

    def disable_key(self, name: str, reason: str) -> KeyRecord:
        require_text(reason, "reason", required=True)
        return self._catalogue.disable(name)

    def enable_key(self, name: str, comment: str) -> KeyRecord:
        require_text(comment, "comment", required=False)
        return self._catalogue.enable(name)

    def destroy_key(self, name: str, confirm_name: str, reason: str) -> KeyRecord:
        require_text(reason, "reason", required=True)
        if confirm_name != name:
            raise KmsError("confirm_name must repeat the key name exactly", code=Code.REQUEST_INVALID)
        return self._catalogue.destroy(name)

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

    def rotate_kek(self, comment: str) -> tuple[int, RewrapReport]:
        require_text(comment, "comment", required=False)
        version = self._catalogue.rotate_kek()
        return version, self._catalogue.rewrap_all(version)

    # -- policy

    def get_policy(self) -> ActivePolicy:
        return self._policies.active()

    def put_policy(
        self, toml: str, expected_version: int, dry_run: bool, by: str = LOCAL_OPERATOR
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
        with self._store.transaction() as conn:
            self._policies.append(conn, toml, expected_version, by, now)
            nodes = load_all(conn)
            checked, changes = _reappraisal(policy, nodes, now)
            for change in changes:
                _apply(conn, change, now)
        return PolicyChange(
            self._policies.active(), checked, tuple(c for c in changes if _is_demotion(c)), False
        )

    # -- collateral

    def import_collateral(self, bundle: bytes) -> ImportReport:
        store = self._verifier.store()
        if store is None:
            raise KmsError("no collateral store is configured", code=Code.SERVER_CONFIG_INVALID)
        items = [(item, "ImportCollateral") for item in classify(bundle, "ImportCollateral")]
        report = store.import_items(items, trust=self._verifier.trust, now=self._clock())
        self._verifier.reload()
        return report


def _reappraisal(policy: Any, nodes: Sequence[NodeRecord], now: datetime) -> tuple[int, list[Change]]:
    """Re-appraise every live node; operator suspensions are never lifted by a policy change."""
    live = [n for n in nodes if n.state is not NodeState.REVOKED]
    inputs = [(n.node_id, claims_from_dict(dict(n.claims)), POLICY_STATE[n.state]) for n in live]
    by_id = {n.node_id: n for n in live}
    changes = []
    for change in reappraise(policy, inputs, now):
        node = by_id[change.node_id]
        operator_held = any(r["code"] == Code.NODE_SUSPENDED_BY_OPERATOR.value for r in node.reasons)
        if operator_held and not _is_demotion(change):
            continue
        changes.append(change)
    return len(live), changes


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
    values: dict[str, Any] = {
        "state": state.value,
        "reasons_json": canonical_json(reasons),
        "state_changed_at": now,
    }
    if demoted:
        values.update(lease_values(None))
    else:
        values["groups_json"] = canonical_json(list(change.groups))
    set_values(conn, change.node_id, values)


__all__ = ["LOCAL_OPERATOR", "Admin", "PolicyChange", "PolicyError"]
