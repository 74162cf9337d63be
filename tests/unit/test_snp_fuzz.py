"""Property: mutated real reports give only typed ``AttestationError``s, never a verified changed region."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectorlib import manifest_entries

from attestation.claims import Claims
from attestation.errors import AttestationError
from attestation.snp import SIGNED_SIZE, SnpCollateral, load_pem_certificates, verify_report
from attestation.trust import PRODUCTION
from enclave.errors import NodeError
from enclave.providers.certtable import GUID_BY_KIND, CertKind, build_cert_table, endorsements

REPORTS = manifest_entries("snp-report")


@pytest.fixture(scope="module")
def corpus(vectors: Path) -> list[tuple[bytes, SnpCollateral, datetime]]:
    """Each report with a collateral holding every vector's leaf and every product's chains."""
    certs: list[bytes] = []
    for path in sorted((vectors / "snp/certs").glob("kds-cert-chain-*.pem")):
        certs += load_pem_certificates(path.read_bytes())
    for entry in REPORTS:
        leaf = (vectors / entry["expected"]["signature_verifies_with"]).read_bytes()
        certs += load_pem_certificates(leaf) if leaf.startswith(b"-----") else [leaf]
    collateral = SnpCollateral.from_der(certs)
    out = []
    for entry in REPORTS:
        lo = datetime.fromisoformat(entry["expected"]["certificates_all_valid_between"][0])
        out.append(((vectors / entry["file"]).read_bytes(), collateral, lo))
    return out


def _mutations() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(
            st.just("flip"),
            st.lists(st.tuples(st.integers(0, 0x49F), st.integers(1, 255)), min_size=1, max_size=4),
        ),
        st.tuples(st.just("truncate"), st.integers(0, 0x49F)),
        st.tuples(st.just("insert"), st.tuples(st.integers(0, 0x4A0), st.binary(min_size=1, max_size=8))),
        st.tuples(st.just("delete"), st.tuples(st.integers(0, 0x49F), st.integers(1, 8))),
        st.tuples(
            st.just("splice"), st.tuples(st.integers(0, 6), st.integers(0, 0x49F), st.integers(1, 0x100))
        ),
        st.tuples(st.just("overwrite"), st.tuples(st.integers(0, 0x49F), st.binary(min_size=1, max_size=16))),
    )


def _apply(kind: str, arg: Any, data: bytes, others: list[bytes]) -> bytes:
    buf = bytearray(data)
    if kind == "flip":
        for offset, mask in arg:
            buf[offset] ^= mask
    elif kind == "truncate":
        del buf[arg:]
    elif kind == "insert":
        buf[arg[0] : arg[0]] = arg[1]
    elif kind == "delete":
        del buf[arg[0] : arg[0] + arg[1]]
    elif kind == "splice":
        donor, start, length = others[arg[0] % len(others)], arg[1], arg[2]
        buf[start : start + length] = donor[start : start + length]
    else:
        buf[arg[0] : arg[0] + len(arg[1])] = arg[1]
    return bytes(buf)


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, max(0, len(REPORTS) - 1)), mutation=_mutations())
def test_mutated_reports_fail_typed(
    corpus: list[tuple[bytes, SnpCollateral, datetime]], index: int, mutation: tuple[str, Any]
) -> None:
    original, collateral, now = corpus[index]
    mutated = _apply(*mutation, original, [c[0] for c in corpus])
    try:
        verify_report(mutated, trust=PRODUCTION, collateral=collateral, now=now, require_revocation=False)
    except AttestationError:
        return
    # Only a change outside the signed region (an unchanged-value splice or an ECDSA signature
    # variant) may still verify; the signed bytes themselves must be the original ones.
    assert len(mutated) == len(original)
    assert mutated[:SIGNED_SIZE] == original[:SIGNED_SIZE]


@pytest.fixture(scope="module")
def leaves(vectors: Path) -> list[tuple[bytes, bytes, SnpCollateral, datetime]]:
    """(report, its VCEK/VLEK DER, collateral with the AMD chains only, a time inside the chain)."""
    chains: list[bytes] = []
    for path in sorted((vectors / "snp/certs").glob("kds-cert-chain-*.pem")):
        chains += load_pem_certificates(path.read_bytes())
    collateral = SnpCollateral.from_der(chains)
    out = []
    for entry in REPORTS:
        leaf = (vectors / entry["expected"]["signature_verifies_with"]).read_bytes()
        der = load_pem_certificates(leaf)[0] if leaf.startswith(b"-----") else leaf
        lo = datetime.fromisoformat(entry["expected"]["certificates_all_valid_between"][0])
        out.append(((vectors / entry["file"]).read_bytes(), der, collateral, lo))
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, max(0, len(REPORTS) - 1)), mutation=_mutations())
def test_mutated_endorsements_fail_typed(
    leaves: list[tuple[bytes, bytes, SnpCollateral, datetime]], index: int, mutation: tuple[str, Any]
) -> None:
    """The node sends its VCEK/VLEK with the evidence: any bytes there end in a coded refusal (a
    malformed AMD extension once escaped as a ValueError while naming the chip in a mismatch)."""
    report, leaf, collateral, now = leaves[index]
    kind, arg = mutation
    if kind == "splice":
        kind, arg = "overwrite", (arg[1] % len(leaf), bytes([arg[2] % 256]))
    mutated = _apply(kind, arg, leaf, [])
    try:
        verify_report(
            report,
            trust=PRODUCTION,
            collateral=collateral,
            now=now,
            endorsements=[mutated],
            require_revocation=False,
        )
    except AttestationError as err:
        assert err.code and err.hint is not None


INSIDE_CRLS = datetime(2026, 9, 1, tzinfo=UTC)  # AMD's KDS CRLs here are valid 2026-08-19 .. 2026-10-04


@dataclass(frozen=True)
class TableCase:
    """A report and the SNP extended-report certificate table a host would hand over with it."""

    report: bytes
    table: bytes
    collateral: SnpCollateral  # the ARK's CRL only: every certificate comes from the table
    now: datetime
    require_revocation: bool
    claims: dict[str, Any]

    def verify(self, endorsements: Sequence[bytes]) -> Claims:
        return verify_report(
            self.report,
            trust=PRODUCTION,
            collateral=self.collateral,
            now=self.now,
            endorsements=endorsements,
            require_revocation=self.require_revocation,
        )


@pytest.fixture(scope="module")
def tables(vectors: Path) -> list[TableCase]:
    out = []
    for entry in REPORTS:
        name = entry["file"].split("/")[1]
        product = name.split("-")[0]
        vlek = "vlek" in name
        chain = load_pem_certificates(
            (vectors / f"snp/certs/kds-cert-chain-{'vlek' if vlek else 'vcek'}-{product}.pem").read_bytes()
        )
        leaf = (vectors / entry["expected"]["signature_verifies_with"]).read_bytes()
        leaf = load_pem_certificates(leaf)[0] if leaf.startswith(b"-----") else leaf
        table = build_cert_table(
            [
                (GUID_BY_KIND[CertKind.VLEK if vlek else CertKind.VCEK], leaf),
                (GUID_BY_KIND[CertKind.ASK], chain[0]),
                (GUID_BY_KIND[CertKind.ARK], chain[1]),
            ]
        )
        crls = SnpCollateral.from_der([], [(vectors / f"snp/certs/kds-crl-{product}.der").read_bytes()])
        # The VLEK leaf is out of its window by the CRLs' time: verify it as archived evidence.
        now = (
            datetime.fromisoformat(entry["expected"]["certificates_all_valid_between"][0])
            if vlek
            else INSIDE_CRLS
        )
        report = (vectors / entry["file"]).read_bytes()
        case = TableCase(report, table, crls, now, not vlek, {})
        out.append(replace(case, claims=case.verify(endorsements(table)).to_dict()))
    return out


def _table_outcome(case: TableCase, table: bytes) -> None:
    """The node refuses a malformed table (NodeError); whatever it forwards ends in a coded refusal or,
    if the change left every certificate that matters intact in meaning, the very same claims."""
    try:
        certs = endorsements(table)
    except NodeError as err:
        assert err.code
        return
    try:
        claims = case.verify(certs)
    except AttestationError as err:
        assert err.code and err.hint is not None
        return
    assert claims.to_dict() == case.claims


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    index=st.integers(0, max(0, len(REPORTS) - 1)),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=3),
)
def test_bit_flips_in_the_certificate_table_fail_typed(
    tables: list[TableCase], index: int, flips: list[tuple[int, int]]
) -> None:
    """Security review finding 7: one flipped bit in a certificate sent with the evidence (a duplicated
    extension, say) must be a coded refusal, never a traceback."""
    case = tables[index]
    table = bytearray(case.table)
    for offset, bit in flips:
        table[offset % len(table)] ^= 1 << bit
    _table_outcome(case, bytes(table))


_OID = re.compile(
    rb"\x06\x03\x55\x1d|\x06[\x09-\x0b]\x2b\x06\x01\x04\x01\x9c\x78\x01"
)  # 2.5.29.x, AMD 1.3.6.1.4.1.3704.1.x


def test_every_bit_of_every_extension_oid_in_the_certificate_table(tables: list[TableCase]) -> None:
    """Exhaustively where random flips rarely land: each bit of the last byte of every standard and AMD
    extension OID in the table's certificates (a flip can make two extensions the same one)."""
    for case in tables:
        for match in _OID.finditer(case.table):
            end = match.start() + 2 + case.table[match.start() + 1]
            for bit in range(8):
                table = bytearray(case.table)
                table[end - 1] ^= 1 << bit
                _table_outcome(case, bytes(table))
