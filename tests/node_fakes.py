"""Small fakes at the ports of the Attestation and Admin use cases (unit tests only): the node store, the
nonce book, the evidence verifier and the policy source; the clock is ``kms.clock.ManualClock``.

The fake store applies a transition's ``NodeChange`` with ``NodeChange.applied_to``, the same meaning
``kms.sql.nodes`` gives it in SQL (tests/integration/test_pg_control.py covers that side).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from attestation.claims import Claims, TcbStatus, Tee
from attestation.errors import AttestationError
from attestation.errors import Code as AttestationCode
from attestation.evidence import SNP_REPORT_SIZE
from kms.audit.draft import Draft
from kms.domain.registry import NodeRecord, NodeState, Transition
from kms.errors import Code, KmsError
from kms.sql.nodes import not_found
from kms.sql.policy_versions import PolicyRow
from kms.usecases.attest import EvidenceInput, NodeKeys
from kms.usecases.nonces import Challenge, NonceError
from kms.usecases.policy_source import ActivePolicy
from policies import parse_policy

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
MEASUREMENT = bytes([0x11]) * 48
OTHER_MEASUREMENT = bytes([0x12]) * 48
REPORT_DATA_AT = 0x50  # where an SNP report carries its report data

POLICY = f"""\
schema = 1
[appraisal]
simulated_evidence = "deny"
[appraisal.snp]
products = ["Milan"]
[appraisal.snp.min_tcb.Milan]
bootloader = 3
tee = 0
snp = 8
microcode = 115
[[appraisal.snp.groups]]
name = "trainers"
measurements = ["{MEASUREMENT.hex()}"]
[[appraisal.snp.groups]]
name = "evaluators"
measurements = ["{MEASUREMENT.hex()}"]
[release.defaults]
lease_seconds = 600
"""
APPROVAL_POLICY = POLICY.replace("[appraisal]\n", "[appraisal]\nrequire_operator_approval = true\n")


def snp_report(report_data: bytes) -> bytes:
    """Bytes the TEE detection takes for an SNP report (version 3), carrying ``report_data``."""
    body = bytearray(SNP_REPORT_SIZE)
    body[0:4] = struct.pack("<I", 3)
    body[REPORT_DATA_AT : REPORT_DATA_AT + 64] = report_data
    return bytes(body)


def evidence(report_data: bytes) -> EvidenceInput:
    return EvidenceInput("snp", snp_report(report_data))


def claims(report_data: bytes = bytes(64), **fields: Any) -> Claims:
    base = Claims(
        tee=Tee.SNP,
        product="Milan",
        version=3,
        measurement=MEASUREMENT,
        report_data=report_data,
        host_data=bytes(32),
        debug=False,
        policy=0x130000,
        tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, "raw": "0300000000000873"},
        tcb_status=TcbStatus.NOT_APPLICABLE,
        platform_id=bytes(64),
        revocation_checked=True,  # the fake verifier stands for one that had a current CRL
        details={
            "vmpl": 0,
            "smt_allowed": False,
            "migration_agent_allowed": False,
            "debug_allowed": False,
            "single_socket": True,
            "signing_key": "vcek",
        },
    )
    return replace(base, **fields)


@dataclass
class FakeVerifier:
    """Verifies every report: its claims are ``fields`` over ``claims()`` with the report's own report
    data (as a real verifier reads it); ``fail`` makes it refuse instead."""

    fields: dict[str, Any] = field(default_factory=dict)
    fail: AttestationCode | None = None
    calls: int = 0

    def verify(self, report: bytes, endorsements: Sequence[bytes], now: datetime) -> Claims:
        self.calls += 1
        if self.fail is not None:
            raise AttestationError("refused by the test", code=self.fail)
        return claims(report[REPORT_DATA_AT : REPORT_DATA_AT + 64], **self.fields)


@dataclass
class FakeNonces:
    issued: dict[bytes, str] = field(default_factory=dict)
    spent: set[bytes] = field(default_factory=set)
    counter: int = 0

    def issue(self, node_name: str) -> Challenge:
        self.counter += 1
        nonce = hashlib.sha256(b"nonce %d" % self.counter).digest()
        self.issued[nonce] = node_name
        return Challenge(nonce, NOW)

    def consume(self, nonce: bytes, node_name: str) -> None:
        if nonce not in self.issued:
            raise NonceError("not issued", code=Code.NONCE_UNKNOWN)
        if nonce in self.spent:
            raise NonceError("already used", code=Code.NONCE_REPLAYED)
        self.spent.add(nonce)
        if self.issued[nonce] != node_name:
            raise NonceError("issued to another name", code=Code.NONCE_NAME_MISMATCH)


class FakePolicies:
    def __init__(self, text: str = POLICY) -> None:
        self.version = 0
        self.current: ActivePolicy | None = None
        self.put(text)

    def put(self, text: str) -> None:
        self.version += 1
        row = PolicyRow(self.version, text, hashlib.sha256(text.encode()).hexdigest(), NOW, "test")
        self.current = ActivePolicy(self.version, parse_policy(text, "test"), row)

    def active(self, *, max_age: float = 0.0) -> ActivePolicy:
        assert self.current is not None
        return self.current


@dataclass
class FakeNodes:
    """``kms.domain.registry.NodeStore`` over a dict; ``entries`` are the audit drafts of its changes."""

    active_version: Callable[[], int] = lambda: 0
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    entries: list[Draft] = field(default_factory=list)
    before_apply: Callable[[], None] = lambda: None  # a concurrent change, say

    def insert(self, record: NodeRecord) -> None:
        if any(n.signing_public == record.signing_public for n in self.nodes.values()):
            raise KmsError("keys in use", code=Code.NODE_KEYS_IN_USE)
        self.nodes[record.node_id] = record

    def get(self, node_id: str) -> NodeRecord | None:
        return self.nodes.get(node_id)

    def list(self, states: Sequence[NodeState], offset: int, limit: int) -> list[NodeRecord]:
        rows = [n for n in self.nodes.values() if not states or n.state in states]
        return rows[offset : offset + limit]

    def apply(
        self,
        node_id: str,
        transition: Transition,
        *,
        entry: Callable[[NodeRecord, NodeRecord], Draft] | None = None,
        policy_version: int | None = None,
    ) -> NodeRecord:
        self.before_apply()
        if policy_version is not None and self.active_version() != policy_version:
            raise KmsError("policy changed", code=Code.POLICY_VERSION_CONFLICT)
        current = self.nodes.get(node_id)
        if current is None:
            raise not_found(node_id)
        updated = transition(current).applied_to(current)
        self.nodes[node_id] = updated
        if entry is not None:
            self.entries.append(entry(current, updated))
        return updated


def keys_of(identity: Any) -> NodeKeys:
    return NodeKeys(identity.kem_suite, identity.kem_public, identity.signing_public)
