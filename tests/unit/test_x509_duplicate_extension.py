"""A certificate carrying the same extension twice makes cryptography raise ``x509.DuplicateExtension``,
a plain ``Exception`` (not a ValueError), when its extensions are first read. Wherever evidence or
collateral carries certificates, that must be the coded refusal of any other unreadable certificate,
never a traceback or INTERNAL (security review, finding 7)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st
from vectorlib import vectors_dir

from attestation.collateral import Collateral, classify
from attestation.errors import AttestationError, CollateralError
from attestation.evidence import verify_evidence
from attestation.snp import SnpCollateral, load_pem_certificates
from attestation.tdx import verify_quote_signatures
from attestation.trust import PRODUCTION

VECTORS = vectors_dir()
needs_vectors = pytest.mark.skipif(VECTORS is None, reason="needs the shared vectors")
DCAPQVL_AT = datetime(2025, 7, 1, tzinfo=UTC)  # inside the v4-dcapqvl PCK chain's validity
CRL_DP_OID = bytes.fromhex("0603551d1f")  # OBJECT IDENTIFIER 2.5.29.31 (cRLDistributionPoints)
KEY_USAGE_OID = bytes.fromhex("0603551d0f")  # 2.5.29.15: one bit away from 2.5.29.31


def _vector(relative: str) -> bytes:
    assert VECTORS is not None
    return (Path(VECTORS) / relative).read_bytes()


def _ask_with_two_key_usages() -> bytes:
    """The real Milan ASK with its CRL distribution point's OID turned (one bit) into keyUsage's."""
    (ask,) = load_pem_certificates(_vector("snp/certs/ask-milan.pem"))
    assert ask.count(CRL_DP_OID) == 1
    bad = ask.replace(CRL_DP_OID, KEY_USAGE_OID)
    with pytest.raises(x509.DuplicateExtension):
        _ = x509.load_der_x509_certificate(bad).extensions
    return bad


@needs_vectors
def test_the_reviewed_tdx_quote_bit_flip_is_a_coded_chain_refusal() -> None:
    quote = bytearray(_vector("tdx/v4-dcapqvl.quote.bin"))
    quote[4548] ^= 0x01  # turns an extension OID of a PCK chain certificate into basicConstraints
    with pytest.raises(AttestationError) as info:
        verify_quote_signatures(bytes(quote), trust=PRODUCTION, now=DCAPQVL_AT)
    assert info.value.code == "TDX_PCK_CHAIN_INVALID" and info.value.hint
    with pytest.raises(AttestationError) as again:
        verify_evidence(bytes(quote), trust=PRODUCTION, collateral=Collateral.empty(), now=DCAPQVL_AT)
    assert again.value.code == "TDX_PCK_CHAIN_INVALID"


@needs_vectors
def test_an_ask_with_a_duplicate_extension_is_refused_as_collateral() -> None:
    bad = _ask_with_two_key_usages()
    items = classify(bad, "ask.der")  # still a certificate by shape
    with pytest.raises(AttestationError) as info:
        Collateral.from_items(items)
    assert info.value.code and info.value.hint is not None
    with pytest.raises(CollateralError):
        SnpCollateral.from_der([bad])


@needs_vectors
def test_an_ask_with_a_duplicate_extension_sent_with_snp_evidence_is_refused() -> None:
    report = _vector("snp/milan-v2-gosevguest.report.bin")
    vcek = _vector("snp/milan-v2-gosevguest.vcek.der")
    (_, ark) = load_pem_certificates(_vector("snp/certs/kds-cert-chain-vcek-milan.pem"))
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            report,
            trust=PRODUCTION,
            collateral=Collateral.empty(),
            now=datetime(2026, 9, 1, tzinfo=UTC),
            endorsements=[vcek, _ask_with_two_key_usages(), ark],
        )
    assert info.value.code.startswith("SNP_") and info.value.hint is not None


def _collateral_files() -> list[bytes]:
    if VECTORS is None:
        return []
    v = Path(VECTORS)
    return [
        load_pem_certificates((v / "snp/certs/ask-milan.pem").read_bytes())[0],
        (v / "snp/milan-v3-oak.vcek.der").read_bytes(),
        (v / "snp/certs/kds-crl-genoa.der").read_bytes(),
        (v / "tdx/certs/intel-sgx-root-ca.der").read_bytes(),
        (v / "tdx/gotdxguest.pck_crl_platform.der").read_bytes(),
    ]


COLLATERAL_FILES = _collateral_files()


@needs_vectors
@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 7))
def test_a_flipped_bit_in_a_collateral_certificate_or_crl_is_a_coded_refusal(
    which: int, offset: int, bit: int
) -> None:
    """Certificates and CRLs an operator imports go through the same parse-error mapping: a bad version
    (InvalidVersion), an unreadable issuer name (ValueError/TypeError on first access) is
    COLLATERAL_MALFORMED, never a raw exception out of ``classify`` or ``Collateral.from_items``."""
    data = bytearray(COLLATERAL_FILES[which])
    data[offset % len(data)] ^= 1 << bit
    try:
        Collateral.from_items(classify(bytes(data), "item.der"))
    except AttestationError as err:
        assert err.code and err.hint is not None
