"""Property: mutated real quotes only ever raise AttestationError subclasses, and a quote whose signed
region (or anything that changes the claims) was altered never verifies."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectorlib import vectors_dir

from attestation.errors import AttestationError
from attestation.tdx import (
    TdxCollateral,
    parse_collateral_bundle,
    parse_quote,
    verify_quote,
    verify_quote_signatures,
)
from attestation.trust import PRODUCTION

NAMES = ["v4-dcapqvl", "v4-gotdxguest-spr", "v4-trustee-debugtd", "v5-gotdxguest-sample"]
DCAPQVL_AT = datetime(2025, 7, 1, tzinfo=UTC)
# A time inside every PCK chain of the four quotes' own validity (2026-02 for the v5 quote).
AT = {
    "v4-dcapqvl": DCAPQVL_AT,
    "v4-gotdxguest-spr": DCAPQVL_AT,
    "v4-trustee-debugtd": DCAPQVL_AT,
    "v5-gotdxguest-sample": datetime(2026, 2, 3, tzinfo=UTC),
}


def _load() -> tuple[dict[str, bytes], TdxCollateral | None]:
    path = vectors_dir()
    if path is None:
        return {}, None
    quotes = {n: (path / "tdx" / f"{n}.quote.bin").read_bytes() for n in NAMES}
    return quotes, parse_collateral_bundle((path / "tdx/v4-dcapqvl.collateral.json").read_bytes())


QUOTES, BUNDLE = _load()
SETTINGS = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: Any) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    data = QUOTES[name]
    op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "overwrite"]))
    if op == "flip":
        i = draw(st.integers(0, len(data) - 1))
        return name, data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if op == "truncate":
        return name, data[: draw(st.integers(0, len(data) - 1))]
    if op == "insert":
        i = draw(st.integers(0, len(data)))
        return name, data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i:]
    if op == "delete":
        i = draw(st.integers(0, len(data) - 1))
        return name, data[:i] + data[i + draw(st.integers(1, 8)) :]
    if op == "overwrite":
        i = draw(st.integers(0, len(data) - 4))
        return name, data[:i] + draw(st.binary(min_size=4, max_size=4)) + data[i + 4 :]
    other = QUOTES[draw(st.sampled_from(NAMES))]
    cut = draw(st.integers(0, min(len(data), len(other))))
    cut2 = draw(st.integers(0, len(other)))
    return name, data[:cut] + other[cut2:]


def _check(data: bytes, verify: Any) -> None:
    try:
        claims = verify(data)
    except AttestationError as exc:
        assert exc.code and exc.hint is not None
        return
    # Success is only possible when the signed region is one of the real quotes' (a splice can rebuild a
    # whole real quote, or append bytes after one) and then the claims are exactly that quote's.
    signed = parse_quote(data).signed_region
    (original,) = [q for q in QUOTES.values() if parse_quote(q).signed_region == signed]
    assert claims.to_dict() == verify(original).to_dict()


@pytest.mark.skipif(not QUOTES, reason="needs the shared vectors")
@SETTINGS
@given(mutated())
def test_mutated_quotes_signatures_only(case: tuple[str, bytes]) -> None:
    name, data = case
    _check(data, lambda d: verify_quote_signatures(d, trust=PRODUCTION, now=AT[name]))


@pytest.mark.skipif(not QUOTES, reason="needs the shared vectors")
@SETTINGS
@given(mutated())
def test_mutated_quotes_full_verification(case: tuple[str, bytes]) -> None:
    _, data = case
    assert BUNDLE is not None
    _check(data, lambda d: verify_quote(d, trust=PRODUCTION, collateral=BUNDLE, now=DCAPQVL_AT))


@pytest.mark.skipif(not QUOTES, reason="needs the shared vectors")
@SETTINGS
@given(st.binary(max_size=6000))
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(AttestationError):
        verify_quote_signatures(data, trust=PRODUCTION, now=DCAPQVL_AT)


_PEM = re.compile(rb"(-----BEGIN CERTIFICATE-----\n)(.*?)(\n-----END CERTIFICATE-----)", re.DOTALL)


def _flip_in_pck_chain(quote: bytes, cert: int, offset: int, mask: int) -> bytes:
    """Flip bits inside the DER of one PCK chain certificate, re-encoded with the same PEM line layout,
    so the quote keeps its length and every mutation reaches the certificate parser, not the base64."""
    blocks = list(_PEM.finditer(quote))
    block = blocks[cert % len(blocks)]
    lines = block.group(2).split(b"\n")
    der = bytearray(base64.b64decode(b"".join(lines)))
    der[offset % len(der)] ^= mask
    text = base64.b64encode(bytes(der))
    body, at = [], 0
    for line in lines:
        body.append(text[at : at + len(line)])
        at += len(line)
    return quote[: block.start(2)] + b"\n".join(body) + quote[block.end(2) :]


@pytest.mark.skipif(not QUOTES, reason="needs the shared vectors")
@SETTINGS
@given(
    st.sampled_from(NAMES),
    st.integers(0, 2),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=3),
)
def test_bit_flips_inside_the_pck_chain_certificates(
    name: str, cert: int, flips: list[tuple[int, int]]
) -> None:
    """Security review finding 7: one flipped bit in a PCK certificate's DER (e.g. an extension OID turned
    into a duplicate basicConstraints) escaped as INTERNAL. Any change there is a coded refusal."""
    data = QUOTES[name]
    for offset, mask in flips:
        data = _flip_in_pck_chain(data, cert, offset, mask)
    assert len(data) == len(QUOTES[name])
    _check(data, lambda d: verify_quote_signatures(d, trust=PRODUCTION, now=AT[name]))


_X509_EXTENSION_OID = re.compile(rb"\x06\x03\x55\x1d")  # OBJECT IDENTIFIER 2.5.29.x


@pytest.mark.skipif(not QUOTES, reason="needs the shared vectors")
@pytest.mark.parametrize("name", NAMES)
def test_every_bit_of_every_x509_extension_oid_in_the_pck_chain(name: str) -> None:
    """Exhaustively, where random flips rarely land: each bit of each standard extension OID's last byte
    (a flip there can turn one extension into a duplicate of another, or into an unknown critical one)."""
    quote = QUOTES[name]
    for cert, block in enumerate(_PEM.finditer(quote)):
        der = base64.b64decode(b"".join(block.group(2).split(b"\n")))
        for match in _X509_EXTENSION_OID.finditer(der):
            for bit in range(8):
                mutated = _flip_in_pck_chain(quote, cert, match.end(), 1 << bit)
                _check(mutated, lambda d: verify_quote_signatures(d, trust=PRODUCTION, now=AT[name]))


def _collateral_inputs() -> dict[str, bytes]:
    path = vectors_dir()
    if path is None:
        return {}
    tdx = path / "tdx"
    return {
        "tcb_info": (tdx / "v4-gotdxguest-spr.tcb_info.json").read_bytes(),
        "qe_identity": (tdx / "gotdxguest.qe_identity.json").read_bytes(),
        "crl": (tdx / "gotdxguest.pck_crl_platform.der").read_bytes(),
        "cert": (tdx / "gotdxguest.tcb_signing_chain.pem").read_bytes(),
        "bundle": (tdx / "v4-dcapqvl.collateral.json").read_bytes(),
    }


COLLATERAL = _collateral_inputs()


@pytest.mark.skipif(not COLLATERAL, reason="needs the shared vectors")
@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(COLLATERAL)), st.data())
def test_mutated_collateral_only_raises_attestation_errors(which: str, data: Any) -> None:
    raw = COLLATERAL[which]
    i = data.draw(st.integers(0, len(raw) - 1))
    mutated = raw[:i] + data.draw(st.binary(max_size=3)) + raw[i + data.draw(st.integers(0, 3)) :]
    items = {k: v for k, v in COLLATERAL.items() if k != "bundle"}
    items[which] = mutated
    try:
        if which == "bundle":
            parse_collateral_bundle(mutated)
        else:
            TdxCollateral.from_items(
                tcb_infos=[items["tcb_info"]],
                qe_identities=[items["qe_identity"]],
                crls=[items["crl"]],
                certs=[items["cert"]],
            )
    except AttestationError:
        pass
