"""Property: mutated real reports give only typed ``AttestationError``s, never a verified changed region."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectorlib import manifest_entries

from attestation.errors import AttestationError
from attestation.snp import SIGNED_SIZE, SnpCollateral, load_pem_certificates, verify_report
from attestation.trust import PRODUCTION

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
        verify_report(mutated, trust=PRODUCTION, collateral=collateral, now=now)
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
        verify_report(report, trust=PRODUCTION, collateral=collateral, now=now, endorsements=[mutated])
    except AttestationError as err:
        assert err.code and err.hint is not None
