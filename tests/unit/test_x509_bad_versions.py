"""A certificate whose version field is not v1-v3 makes cryptography raise its own ``InvalidVersion``
(not a ValueError). Wherever evidence or collateral carries certificates, that must end as the coded
refusal of any other unreadable certificate, never a traceback (found by tests/unit/test_tdx_fuzz.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from vectorlib import vectors_dir

from attestation.collateral import classify
from attestation.errors import AttestationError, CollateralError
from attestation.snp.certs import parse_certificate
from attestation.tdx import verify_quote_signatures
from attestation.trust import PRODUCTION

VECTORS = vectors_dir()
needs_vectors = pytest.mark.skipif(VECTORS is None, reason="needs the shared vectors")
DCAPQVL_AT = datetime(2025, 7, 1, tzinfo=UTC)  # inside the v4-dcapqvl PCK chain's validity
V3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2: X.509 v3
V11 = bytes.fromhex("a00302010a")  # [0] EXPLICIT INTEGER 10: no such version


def _vector(relative: str) -> bytes:
    assert VECTORS is not None
    return (Path(VECTORS) / relative).read_bytes()


@needs_vectors
def test_a_quote_whose_pck_leaf_has_a_bad_version_is_refused_with_a_code() -> None:
    quote = _vector("tdx/v4-dcapqvl.quote.bin")
    leaf = b"MIIE8TCCBJagAwIBAgIU"  # the start of the PCK leaf's PEM: ... version INTEGER 2 ...
    assert quote.count(leaf) == 1
    bad = quote.replace(leaf, b"MIIE8TCCBJagAwIBCgIU")  # ... version INTEGER 10
    with pytest.raises(AttestationError) as info:
        verify_quote_signatures(bad, trust=PRODUCTION, now=DCAPQVL_AT)
    assert info.value.code == "TDX_PCK_CHAIN_INVALID" and info.value.hint


@needs_vectors
def test_a_vcek_with_a_bad_version_is_a_value_error_and_collateral_refuses_it() -> None:
    vcek = _vector("snp/milan-v2-gosevguest.vcek.der")
    assert vcek.count(V3) == 1
    bad = vcek.replace(V3, V11)
    with pytest.raises(ValueError, match="version"):
        parse_certificate(bad)
    with pytest.raises(CollateralError) as info:
        classify(bad, "bad-vcek.der")
    assert info.value.code == "COLLATERAL_MALFORMED"
