"""What ``sovereign admin`` shows people: a table for lists, a few labelled lines for one record, and for
a held change the command that applies it. ``--json`` prints the records instead (``_output``)."""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from typing import Any

from sovereign.cli._output import joined, print_table, readable, until
from sovereign.client.records import (
    ApprovedChange,
    ChangePage,
    CollateralImport,
    KekChange,
    KekRotation,
    Key,
    KeyChange,
    KeyPage,
    LineageException,
    LineageExceptionChange,
    LineageExceptionWithdrawal,
    Node,
    NodeChange,
    NodePage,
    PendingChange,
    Policy,
    PolicyApplied,
    PolicyPut,
)


def _lines(pairs: list[tuple[str, Any]]) -> None:
    width = max(len(label) for label, _ in pairs)
    for label, value in pairs:
        print(f"{label.ljust(width)}  {value}")


def node_rows(page: NodePage, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "name": n.node_name,
            "node_id": n.node_id,
            "state": readable(n.state),
            "groups": joined(n.groups or n.requested_groups),
            "lease_expires": until(n.lease.expires_at if n.lease else None, now),
        }
        for n in page.nodes
    ]


def show_node(node: Node, now: datetime) -> None:
    claims = node.claims
    _lines(
        [
            ("name", node.node_name),
            ("node id", node.node_id),
            ("state", readable(node.state)),
            ("groups", joined(node.groups)),
            ("requested groups", joined(node.requested_groups)),
            ("lease expires", until(node.lease.expires_at if node.lease else None, now)),
            ("tee", f"{readable(claims.tee)} {claims.product}" if claims and claims.tee else "-"),
            ("tcb status", claims.tcb_status if claims and claims.tcb_status else "-"),
            ("simulated", "yes" if claims and claims.simulated else "no"),
            ("policy version", node.policy_version),
            ("registered", until(node.registered_at, now).split(" (")[0]),
        ]
    )
    for reason in node.reasons:
        print(f"reason  {reason.code}: {reason.message}")


def key_rows(page: KeyPage) -> list[dict[str, Any]]:
    return [
        {
            "name": k.name,
            "kind": readable(k.kind),
            "state": readable(k.state),
            "version": k.latest_version,
            "updated_at": k.updated_at,
        }
        for k in page.keys
    ]


def show_key(key: Key) -> None:
    _lines(
        [
            ("name", key.name),
            ("kind", readable(key.kind)),
            ("state", readable(key.state)),
            ("latest version", key.latest_version),
            ("versions", joined(v.version for v in key.versions)),
        ]
    )


def show_pending(change: PendingChange, now: datetime) -> None:
    print(f"held for a second operator: change {change.change_id} ({change.summary or change.method})")
    print(f"  proposed by {change.proposed_by or '-'}, expires {until(change.expires_at, now)}")
    print(f"  another operator applies it with: sovereign admin pending approve {change.change_id}")


def change_rows(page: ChangePage, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "change_id": c.change_id,
            "state": readable(c.state),
            "summary": c.summary or c.method,
            "proposed_by": c.proposed_by,
            "expires": until(c.expires_at, now) if c.state and c.state.value == "PENDING" else "-",
            "decided_by": c.decided_by or "-",
        }
        for c in page.changes
    ]


def show_policy(policy: Policy) -> None:
    print(
        f"# policy version {policy.version}, sha256 {policy.sha256.hex()}, updated "
        f"{until(policy.updated_at, datetime.now(UTC)).split(' (')[0]} by {policy.updated_by or '-'}"
    )
    print(policy.toml, end="" if policy.toml.endswith("\n") else "\n")


def show_applied(applied: PolicyApplied, before: Policy | None, new_toml: str) -> None:
    policy = applied.policy
    if applied.dry_run:
        print("dry run: nothing changed")
        if before is not None:
            diff = difflib.unified_diff(
                before.toml.splitlines(keepends=True),
                new_toml.splitlines(keepends=True),
                f"active policy (version {before.version})",
                "proposed policy",
            )
            text = "".join(diff)
            print(text if text else "the proposed policy equals the active one", end="" if text else "\n")
    elif policy is not None:
        print(f"policy version {policy.version} is active (sha256 {policy.sha256.hex()})")
    re = applied.reappraisal
    if re is not None:
        verb = "would be suspended" if applied.dry_run else "suspended"
        print(f"{re.nodes_checked} nodes re-appraised; {len(re.suspended)} {verb}")
        for node in re.suspended:
            codes = joined(r.code for r in node.reasons)
            print(f"  {node.node_name or node.node_id} ({node.node_id}): {codes}")


def show_rotation(rotation: KekRotation) -> None:
    print(f"KEK is now version {rotation.kek_version}; {rotation.rewrapped} key versions rewrapped")


def show_lineage_exception(exception: LineageException) -> None:
    print(f"group {exception.group} may now read {exception.key_name} despite its lineage restriction")


def show_withdrawn(exception: LineageException) -> None:
    print(
        f"group {exception.group} may no longer read {exception.key_name}: its lineage exception is withdrawn"
    )


def show_import(report: CollateralImport) -> None:
    rows = [
        {
            "kind": i.kind,
            "sha256": i.sha256.hex()[:16],
            "status": "already present" if i.already_present else "added",
            "not_after": i.not_after,
        }
        for i in report.items
    ]
    print_table(rows, ("kind", "status", "not_after", "sha256"))
    print(f"{report.added} added")


def show(reply: Any, now: datetime) -> None:
    """People's view of any Admin reply."""
    if isinstance(reply, NodePage):
        print_table(node_rows(reply, now), ("name", "node_id", "state", "groups", "lease_expires"))
    elif isinstance(reply, Node):
        show_node(reply, now)
    elif isinstance(reply, KeyPage):
        print_table(key_rows(reply), ("name", "kind", "state", "version", "updated_at"))
    elif isinstance(reply, ChangePage):
        print_table(
            change_rows(reply, now), ("change_id", "state", "summary", "proposed_by", "expires", "decided_by")
        )
    elif (
        isinstance(
            reply,
            NodeChange
            | KeyChange
            | KekChange
            | PolicyPut
            | LineageExceptionChange
            | LineageExceptionWithdrawal,
        )
        and reply.pending_change
    ):
        show_pending(reply.pending_change, now)
    elif isinstance(reply, NodeChange) and reply.node is not None:
        show_node(reply.node, now)
    elif isinstance(reply, KeyChange) and reply.key is not None:
        show_key(reply.key)
    elif isinstance(reply, LineageExceptionChange) and reply.lineage_exception is not None:
        show_lineage_exception(reply.lineage_exception)
    elif isinstance(reply, LineageExceptionWithdrawal) and reply.withdrawn is not None:
        show_withdrawn(reply.withdrawn)
    elif isinstance(reply, KekChange) and reply.rotation is not None:
        show_rotation(reply.rotation)
    elif isinstance(reply, Policy):
        show_policy(reply)
    elif isinstance(reply, ApprovedChange):
        change = reply.change
        print(f"applied change {change.change_id if change else '-'} ({change.summary if change else ''})")
        if reply.node is not None:
            show_node(reply.node, now)
        if reply.key is not None:
            show_key(reply.key)
        if reply.rotation is not None:
            show_rotation(reply.rotation)
        if reply.policy is not None:
            show_applied(reply.policy, None, "")
        if reply.lineage_exception is not None:
            show_lineage_exception(reply.lineage_exception)
        if reply.lineage_exception_withdrawn is not None:
            show_withdrawn(reply.lineage_exception_withdrawn)
    elif isinstance(reply, PendingChange):
        print(f"change {reply.change_id} is {readable(reply.state)}")
    elif isinstance(reply, CollateralImport):
        show_import(reply)
    else:
        print(reply)
