"""The validated policy: frozen values built only by ``policies.schema`` (every field already checked)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from attestation.claims import TcbStatus

SCHEMA_VERSION = 1


class Verdict(StrEnum):
    ATTESTED = "ATTESTED"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    REJECTED = "REJECTED"


class NodeState(StrEnum):
    """A node's state in the registry: a verdict, or one an operator or a policy change set."""

    ATTESTED = "ATTESTED"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    REJECTED = "REJECTED"
    SUSPENDED = "SUSPENDED"  # stored claims no longer pass the current policy
    REVOKED = "REVOKED"  # an operator's decision; no policy change undoes it


class Purpose(StrEnum):
    READ = "read"
    WRITE = "write"


class OnFailure(StrEnum):
    DENY = "deny"
    WARN = "warn"


class Simulated(StrEnum):
    DENY = "deny"
    ALLOW = "allow"


SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
SNP_SIGNING_KEYS = ("vcek", "vlek")


@dataclass(frozen=True)
class SnpMinTcb:
    product: str
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin only; when set, a report without FMC fails


@dataclass(frozen=True)
class SnpGroup:
    name: str
    measurements: frozenset[bytes]
    host_data: frozenset[bytes] | None = None  # None: not checked


@dataclass(frozen=True)
class TdxImage:
    """One exact launch: MRTD plus the RTMRs that are pinned (None: not checked)."""

    mrtd: bytes
    rtmrs: tuple[bytes | None, bytes | None, bytes | None, bytes | None] = (None, None, None, None)


@dataclass(frozen=True)
class TdxGroup:
    name: str
    images: tuple[TdxImage, ...]
    mrconfigid: frozenset[bytes] | None = None  # None: not checked


@dataclass(frozen=True)
class SnpRules:
    products: frozenset[str]
    min_tcb: tuple[SnpMinTcb, ...]
    forbid_debug: bool = True
    allow_smt: bool = True
    forbid_migration_agent: bool = True
    require_single_socket: bool = False
    max_vmpl: int = 0
    signing_keys: frozenset[str] = frozenset(SNP_SIGNING_KEYS)
    groups: tuple[SnpGroup, ...] = ()

    def minimum_for(self, product: str) -> SnpMinTcb | None:
        return next((m for m in self.min_tcb if m.product == product), None)


@dataclass(frozen=True)
class TdxRules:
    tcb_statuses: frozenset[TcbStatus] = frozenset({TcbStatus.UP_TO_DATE})
    forbid_debug: bool = True
    forbidden_advisories: frozenset[str] = frozenset()
    mrseam: frozenset[bytes] | None = None  # None: not checked
    groups: tuple[TdxGroup, ...] = ()


GPU_ARCHITECTURES = ("HOPPER", "BLACKWELL")


@dataclass(frozen=True)
class GpuGroup:
    """A GPU-attested group: a node keeps this (CPU-matched) group only with enough GPUs, each allowed."""

    name: str
    min_count: int = 1
    ueids: frozenset[str] | None = None  # None: any device


@dataclass(frozen=True)
class GpuRules:
    """``[appraisal.gpu]``: applied to every GPU a node presents (claims.details["gpus"])."""

    min_count: int = 0  # GPUs every node must present
    architectures: frozenset[str] = frozenset(GPU_ARCHITECTURES)
    min_driver: tuple[int, ...] | None = None  # None: any driver
    vbios_versions: frozenset[str] | None = None  # None: any VBIOS
    require_rim_match: bool = True
    require_cc_mode: bool = True
    groups: tuple[GpuGroup, ...] = ()

    def group(self, name: str) -> GpuGroup | None:
        return next((g for g in self.groups if g.name == name), None)


@dataclass(frozen=True)
class AppraisalRules:
    snp: SnpRules | None = None  # None: the TEE is not allowed at all
    tdx: TdxRules | None = None
    gpu: GpuRules | None = None  # None: GPU claims are not appraised
    simulated_evidence: Simulated = Simulated.DENY
    collateral_expired: OnFailure = OnFailure.DENY
    unchecked_revocation: OnFailure = OnFailure.DENY
    require_operator_approval: bool = False


@dataclass(frozen=True)
class ReleaseRule:
    index: int
    name: str
    groups: frozenset[str]
    keys: tuple[str, ...]  # exact names, or "prefix/*"
    purposes: frozenset[Purpose]
    lease_seconds: int
    max_evidence_age: int
    require_gpu_attested: bool = False  # every group named is a GPU-attested group (checked at load)
    # a model key released for read under this rule carries the read restrictions of its datasets
    lineage_restricted: bool = False

    def matches_key(self, key_name: str) -> bool:
        return any(key_name.startswith(p[:-1]) if p.endswith("/*") else key_name == p for p in self.keys)


@dataclass(frozen=True)
class ReleaseRules:
    lease_seconds: int = 300
    max_evidence_age: int = 3600
    rules: tuple[ReleaseRule, ...] = ()


@dataclass(frozen=True)
class Policy:
    appraisal: AppraisalRules
    release: ReleaseRules
    version: int = SCHEMA_VERSION
    source: str = field(default="<string>", compare=False)

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the canonical form: the same for any two documents that mean the same thing."""
        canonical = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def canonical(self) -> dict[str, Any]:
        """A JSON-compatible form with every default filled in and every set sorted."""
        data = asdict(self)
        del data["source"]
        # a policy without GPU rules keeps the digest it had before they existed
        if data["appraisal"]["gpu"] is None:
            del data["appraisal"]["gpu"]
        for rule in data["release"]["rules"]:
            if not rule["require_gpu_attested"]:
                del rule["require_gpu_attested"]
            if not rule["lineage_restricted"]:  # likewise for rules without the lineage restriction
                del rule["lineage_restricted"]
        return _jsonable(data)  # type: ignore[no-any-return]

    def groups(self) -> frozenset[str]:
        names: set[str] = set()
        if self.appraisal.snp is not None:
            names.update(g.name for g in self.appraisal.snp.groups)
        if self.appraisal.tdx is not None:
            names.update(g.name for g in self.appraisal.tdx.groups)
        return frozenset(names)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    return value
