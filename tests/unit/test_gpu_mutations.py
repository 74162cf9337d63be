"""Mutation properties on the real GPU reports and RIMs: a change to any signed byte is never accepted, and
every refusal is a typed, coded ``AttestationError`` (never another exception).

Reports: every byte of the signed region and of the signature of ``hopper-nvtrust-550`` is flipped
(exhaustive), and hypothesis flips random bytes with random masks in every valid report.

RIMs: a byte change is a change to *signed* content when the document no longer canonicalises to the same
bytes (C14N, with whitespace inside base64 text ignored); those must all be refused. Changes that leave the
canonical form equal (quote style, whitespace inside a tag) are the same document and are not counted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree

from attestation import gpu
from attestation.errors import AttestationError
from attestation.trust import PRODUCTION

NOW = datetime(2024, 6, 1, tzinfo=UTC)
VALID_REPORTS = ["hopper-nvtrust-550", "hopper-sdk-535", "hopper-sdk-expired", "hopper-coco"]
VALID_RIMS = ["driver-nvtrust-sample", "vbios-96005E0001-nvtrust-sample", "vbios-96005E0001-mismatch"]
OPTIONS = gpu.GpuVerifyOptions(require_revocation=False, require_rims=False)
# The device chain is unchanged by report mutations, so its link checks are cached as in production.
CACHE = gpu.GpuVerifierCache()
_B64_TEXT = re.compile(rb"(<(?:ds:)?(?:X509Certificate|SignatureValue|DigestValue)>)([^<]*)(<)")


def _evidence(vectors: Path, name: str) -> gpu.GpuEvidence:
    return gpu.from_pem(
        gpu.decode_hex_report((vectors / f"gpu/{name}.report.txt").read_text()),
        (vectors / f"gpu/{name}.chain.pem").read_bytes(),
    )


def _accepts(evidence: gpu.GpuEvidence, report: bytes, nonce: bytes) -> bool:
    try:
        gpu.verify_gpu(
            gpu.GpuEvidence(report, evidence.chain), nonce=nonce, trust=PRODUCTION, now=NOW,
            collateral=None, driver_rim=None, vbios_rim=None, options=OPTIONS, cache=CACHE,
        )  # fmt: skip
    except AttestationError as exc:
        assert exc.code.value.startswith("GPU_"), exc.code
        return False
    return True


def test_every_signed_byte_of_a_report(vectors: Path) -> None:
    evidence = _evidence(vectors, "hopper-nvtrust-550")
    parsed = gpu.parse_report(evidence.report)
    nonce = parsed.request.nonce
    assert _accepts(evidence, evidence.report, nonce)
    covered = len(parsed.signed) + len(parsed.signature)
    assert covered == len(evidence.report)
    accepted = [i for i in range(covered) if _accepts(evidence, _flip(evidence.report, i, 0x01), nonce)]
    assert accepted == []


def _flip(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(VALID_REPORTS), where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_random_mutations_of_every_report(vectors: Path, name: str, where: float, mask: int) -> None:
    evidence = _evidence(vectors, name)
    parsed = gpu.parse_report(evidence.report)
    covered = len(parsed.signed) + len(parsed.signature)
    assert not _accepts(evidence, _flip(evidence.report, int(where * covered), mask), parsed.request.nonce)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_are_a_coded_refusal(data: bytes) -> None:
    with pytest.raises(AttestationError):
        gpu.verify_gpu(
            gpu.GpuEvidence(data, ()), nonce=bytes(32), trust=PRODUCTION, now=NOW, collateral=None,
            driver_rim=None, vbios_rim=None, options=OPTIONS,
        )  # fmt: skip


def _canonical(data: bytes) -> bytes | None:
    try:
        root = etree.fromstring(_B64_TEXT.sub(lambda m: m[1] + re.sub(rb"\s", b"", m[2]) + m[3], data))
    except etree.LxmlError:
        return None
    return bytes(etree.tostring(root, method="c14n"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(VALID_RIMS), where=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255))
def test_rim_mutations_of_signed_content_are_refused(
    vectors: Path, name: str, where: float, value: int
) -> None:
    original = (vectors / f"gpu/rims/{name}.swidtag").read_bytes()
    index = int(where * len(original))
    assume(original[index] != value)
    mutated = original[:index] + bytes([value]) + original[index + 1 :]
    canonical = _canonical(mutated)
    assume(canonical != _canonical(original))  # the same document, written differently, is not a change
    with pytest.raises(AttestationError) as info:
        gpu.verify_rim(mutated, trust=PRODUCTION, now=NOW)
    assert info.value.code.value.startswith("GPU_RIM_"), info.value.code


@pytest.mark.parametrize("name", VALID_RIMS)
def test_every_golden_value_of_a_rim_is_signed(vectors: Path, name: str) -> None:
    """Exhaustive over the golden values: one hex digit changed in any Hash attribute is refused."""
    original = (vectors / f"gpu/rims/{name}.swidtag").read_bytes()
    gpu.verify_rim(original, trust=PRODUCTION, now=NOW)
    starts = [m.start(1) for m in re.finditer(rb'Hash\d+="([0-9a-fA-F]+)"', original)]
    assert len(starts) >= 64
    for start in starts:
        digit = original[start : start + 1]
        mutated = original[:start] + (b"1" if digit != b"1" else b"2") + original[start + 1 :]
        with pytest.raises(AttestationError):
            gpu.verify_rim(mutated, trust=PRODUCTION, now=NOW)
