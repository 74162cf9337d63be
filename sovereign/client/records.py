"""What the operator client returns: plain, frozen values named as the wire contract names them.

Field names equal the protobuf field names (``proto/sovereign/v1/admin.proto``) so that ``to_json``
(``sovereign.client.wire``) renders them exactly as protobuf's JSON mapping does: the CLI's output is the
same as when it printed the replies themselves. An unset enum is None; ``INT64`` marks the 64-bit
integers that the JSON mapping writes as strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

INT64: Mapping[str, Any] = {"int64": True}


class Tee(StrEnum):
    SNP = "SNP"
    TDX = "TDX"


class NodeState(StrEnum):
    ATTESTED = "ATTESTED"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    REJECTED = "REJECTED"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"


class KeyKind(StrEnum):
    DATASET = "DATASET"
    MODEL = "MODEL"


class KeyState(StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    DESTROYED = "DESTROYED"


class ChangeState(StrEnum):
    PENDING = "PENDING"
    APPLIED = "APPLIED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class Decision(StrEnum):
    GRANT = "GRANT"
    DENY = "DENY"


class Purpose(StrEnum):
    READ = "READ"
    WRITE = "WRITE"


@dataclass(frozen=True)
class Reason:
    code: str = ""
    message: str = ""
    hint: str = ""


@dataclass(frozen=True)
class Lease:
    lease_id: str = ""
    issued_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class KemSuite:
    kem_id: int = 0
    kdf_id: int = 0
    aead_id: int = 0


@dataclass(frozen=True)
class NodeKeys:
    kem_suite: KemSuite | None = None
    kem_public_key: bytes = b""
    signing_public_key: bytes = b""


@dataclass(frozen=True)
class GpuSummary:
    architecture: str = ""
    driver_version: str = ""
    vbios_version: str = ""
    ueid: str = ""
    measurement_result: str = ""
    cc_mode: str = ""
    revocation: str = ""
    simulated: bool = False


@dataclass(frozen=True)
class ClaimsSummary:
    tee: Tee | None = None
    product: str = ""
    evidence_version: int = 0
    measurement: bytes = b""
    host_data: bytes = b""
    debug: bool = False
    tcb_status: str = ""
    platform_id: bytes = b""
    rtmrs: tuple[bytes, ...] = ()
    simulated: bool = False
    gpus: tuple[GpuSummary, ...] = ()


@dataclass(frozen=True)
class Node:
    node_id: str = ""
    node_name: str = ""
    state: NodeState | None = None
    keys: NodeKeys | None = None
    claims: ClaimsSummary | None = None
    groups: tuple[str, ...] = ()
    requested_groups: tuple[str, ...] = ()
    lease: Lease | None = None
    reasons: tuple[Reason, ...] = ()
    policy_version: int = dataclasses.field(default=0, metadata=INT64)
    registered_at: datetime | None = None
    attested_at: datetime | None = None
    state_changed_at: datetime | None = None


@dataclass(frozen=True)
class KeyVersion:
    version: int = 0
    created_at: datetime | None = None
    kek_version: int = 0


@dataclass(frozen=True)
class Key:
    name: str = ""
    kind: KeyKind | None = None
    state: KeyState | None = None
    latest_version: int = 0
    versions: tuple[KeyVersion, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class KekRotation:
    kek_version: int = 0
    rewrapped: int = 0


@dataclass(frozen=True)
class Policy:
    version: int = dataclasses.field(default=0, metadata=INT64)
    toml: str = ""
    sha256: bytes = b""
    updated_at: datetime | None = None
    updated_by: str = ""


@dataclass(frozen=True)
class SuspendedNode:
    node_id: str = ""
    node_name: str = ""
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class Reappraisal:
    nodes_checked: int = 0
    suspended: tuple[SuspendedNode, ...] = ()


@dataclass(frozen=True)
class PolicyApplied:
    policy: Policy | None = None
    reappraisal: Reappraisal | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class PendingChange:
    change_id: str = ""
    method: str = ""
    # The held request in protobuf's JSON form ({"@type": ..., fields}): shown, never sent back.
    request: Mapping[str, Any] | None = None
    summary: str = ""
    proposed_by: str = ""
    proposed_at: datetime | None = None
    expires_at: datetime | None = None
    state: ChangeState | None = None
    decided_by: str = ""
    decided_at: datetime | None = None
    comment: str = ""


@dataclass(frozen=True)
class NodeChange:
    """A node change: applied (``node``) or held for a second operator (``pending_change``)."""

    node: Node | None = None
    pending_change: PendingChange | None = None


@dataclass(frozen=True)
class KeyChange:
    key: Key | None = None
    pending_change: PendingChange | None = None


@dataclass(frozen=True)
class KekChange:
    rotation: KekRotation | None = None
    pending_change: PendingChange | None = None


@dataclass(frozen=True)
class PolicyPut:
    applied: PolicyApplied | None = None
    pending_change: PendingChange | None = None


@dataclass(frozen=True)
class LineageException:
    """A group allowed to read a model key despite its lineage-restricted release rule."""

    key_name: str = ""
    group: str = ""


@dataclass(frozen=True)
class LineageExceptionChange:
    """Always held: ``pending_change`` is set; ``lineage_exception`` only by ``ApprovedChange``."""

    lineage_exception: LineageException | None = None
    pending_change: PendingChange | None = None


@dataclass(frozen=True)
class LineageExceptionWithdrawal:
    """Applied at once (``withdrawn``) unless the two-person settings hold it (``pending_change``)."""

    withdrawn: LineageException | None = None
    pending_change: PendingChange | None = None


@dataclass(frozen=True)
class ApprovedChange:
    """The change (now APPLIED) and what applying it produced: one of node, key, rotation, policy,
    lineage exception, lineage exception withdrawn."""

    change: PendingChange | None = None
    node: Node | None = None
    key: Key | None = None
    rotation: KekRotation | None = None
    policy: PolicyApplied | None = None
    lineage_exception: LineageException | None = None
    lineage_exception_withdrawn: LineageException | None = None


@dataclass(frozen=True)
class CollateralItem:
    kind: str = ""
    sha256: bytes = b""
    already_present: bool = False
    not_after: datetime | None = None


@dataclass(frozen=True)
class CollateralImport:
    items: tuple[CollateralItem, ...] = ()
    added: int = 0


@dataclass(frozen=True)
class NodePage:
    nodes: tuple[Node, ...] = ()
    next_page_token: str = ""


@dataclass(frozen=True)
class KeyPage:
    keys: tuple[Key, ...] = ()
    next_page_token: str = ""


@dataclass(frozen=True)
class ChangePage:
    changes: tuple[PendingChange, ...] = ()
    next_page_token: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """One ledger entry; ``canonical`` is the authority, the other fields are decoded from it."""

    sequence: int = dataclasses.field(default=0, metadata=INT64)
    canonical: bytes = b""
    leaf_hash: bytes = b""
    time: datetime | None = None
    event: str = ""
    decision: Decision | None = None
    node_id: str = ""
    key_name: str = ""
    key_version: int = 0
    purpose: Purpose | None = None
    request_id: bytes = b""
    reasons: tuple[Reason, ...] = ()
    actor: str = ""


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditRecord, ...] = ()
    next_page_token: str = ""
