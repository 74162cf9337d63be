"""What a key release stands on, checked twice by one pure function.

The release policy decides whether a node may have a key at all (``policies.decide_release``). A grant
it allows also rests on facts that can change while the key is being unwrapped: the node's state and
lease, the key's state and version, the active policy version, and whether the request id was used.
``check_premises`` checks them over a ``Snapshot`` of those facts: before the unwrap on (short-lived
cached) reads, and again inside the transaction that records the grant, on fresh reads. The first
premise that fails is the reason; its code is the one the node and the audit ledger see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from attestation.coded import Reason
from kms.domain.catalogue import KeyKind, KeyRecord, KeyState
from kms.domain.registry import NodeRecord, NodeState
from kms.errors import Code, reason_for
from policies.errors import Code as PolicyCode


@dataclass(frozen=True)
class NodeStanding:
    state: NodeState
    lease_id: str | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class KeyStanding:
    kind: KeyKind
    state: KeyState
    current_version: int
    material: Mapping[int, bool]  # every version: does it still have wrapped material?


@dataclass(frozen=True)
class Snapshot:
    """The facts a grant rests on, read at one moment. ``None``: no such node / key."""

    node: NodeStanding | None
    key: KeyStanding | None
    policy_version: int
    request_seen: bool = False  # only the commit knows: the request ids are recorded there


@dataclass(frozen=True)
class Grant:
    """What a grant was decided on."""

    node_id: str
    lease_id: str | None
    key_name: str
    key_version: int  # resolved: never 0
    purpose: str  # "read" | "write"
    policy_version: int
    decided_at: datetime


def node_standing(node: NodeRecord | None) -> NodeStanding | None:
    return None if node is None else NodeStanding(node.state, node.lease_id, node.lease_expires_at)


def key_standing(key: KeyRecord | None) -> KeyStanding | None:
    if key is None:
        return None
    material = {v.version: v.ciphertext is not None for v in key.versions}
    return KeyStanding(key.kind, key.state, key.current_version, material)


def check_premises(grant: Grant, now: Snapshot) -> Reason | None:
    """The first premise of ``grant`` that ``now`` no longer holds, or None."""
    node = now.node
    if node is None or node.state is not NodeState.ATTESTED:
        shown = node.state.value if node is not None else "gone"
        return Reason(
            PolicyCode.RELEASE_NODE_NOT_ATTESTED.value, f"node {grant.node_id} is {shown}, not attested"
        )
    if (
        node.lease_id != grant.lease_id
        or node.lease_expires_at is None
        or node.lease_expires_at <= grant.decided_at
    ):
        return reason_for(
            Code.RELEASE_NODE_CHANGED,
            f"the lease of node {grant.node_id} ended or was replaced",
            "re-attest (Renew) and retry",
        )
    reason = check_key(grant, now.key)
    if reason is not None:
        return reason
    if now.policy_version != grant.policy_version:
        return reason_for(
            Code.RELEASE_POLICY_CHANGED,
            f"the policy changed (v{grant.policy_version} -> v{now.policy_version}) while the request was "
            "served",
            "retry with a fresh request id",
        )
    if now.request_seen:
        return reason_for(
            Code.REQUEST_REPLAYED,
            "this request id was already used by the node",
            "every release request needs a fresh random 16-byte request_id",
        )
    return None


def key_usable(name: str, key: KeyStanding | None) -> Reason | None:
    """Does the key exist and may it be used at all (neither disabled nor destroyed)?"""
    if key is None:
        return reason_for(Code.KEY_NOT_FOUND, f"no key named {name!r}")
    if key.state is KeyState.DESTROYED:
        return reason_for(Code.KEY_DESTROYED, f"key {name} is destroyed")
    if key.state is KeyState.DISABLED:
        return reason_for(Code.KEY_DISABLED, f"key {name} is disabled")
    return None


def check_key(grant: Grant, key: KeyStanding | None) -> Reason | None:
    """The key premises: usable, the version exists, WRITE only of a model key's latest version, and
    the version still has its wrapped material."""
    reason = key_usable(grant.key_name, key)
    if reason is not None or key is None:
        return reason
    name, version = grant.key_name, grant.key_version
    if version not in key.material:
        return reason_for(
            Code.KEY_VERSION_NOT_FOUND,
            f"key {name} has no version {version} (versions 1..{key.current_version})",
        )
    if grant.purpose == "write" and key.kind is not KeyKind.MODEL:
        return Reason(PolicyCode.RELEASE_PURPOSE_NOT_ALLOWED.value, f"{name} is a dataset key: read only")
    if grant.purpose == "write" and version != key.current_version:
        return reason_for(
            Code.RELEASE_VERSION_NOT_WRITABLE,
            f"only v{key.current_version} of {name} is released for write, not v{version}",
            "ask for the latest version (key_version 0) with a fresh request id",
        )
    if not key.material[version]:
        return reason_for(Code.KEY_DESTROYED, f"{name} v{version} has no wrapped material")
    return None
