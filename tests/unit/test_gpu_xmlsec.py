"""RIM signature verdicts agree with an independent XML-DSig implementation: Debian's ``xmlsec1`` (OpenSSL).

Both judge the same files at the same time against the pinned NVIDIA RIM root: every shared RIM and tampered
copies of them (golden value, version, signature value, digest value, a foreign signing certificate, no
signature). The test installs ``xmlsec1`` with apt-get when it is missing, as the PostgreSQL fixture does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from xmlsec1 import ensure_xmlsec1, xmlsec1_accepts

from attestation import gpu
from attestation.errors import AttestationError, Code
from attestation.trust import PRODUCTION

INSIDE = datetime(2024, 6, 1, tzinfo=UTC)
TODAY = datetime(2026, 12, 3, tzinfo=UTC)
RIMS = [
    "driver-nvtrust-sample",
    "vbios-96005E0001-nvtrust-sample",
    "vbios-96005E0001-mismatch",
    "driver-gh100-535.86.09-mismatch",
    "driver-gh100-570.124.03-expired",
]


@pytest.fixture(scope="module")
def xmlsec1() -> str:
    return ensure_xmlsec1()


def ours_accepts(data: bytes, now: datetime) -> bool:
    try:
        gpu.verify_rim(data, trust=PRODUCTION, now=now)
    except AttestationError as exc:
        assert exc.code in {Code.GPU_RIM_INVALID, Code.GPU_RIM_UNTRUSTED, Code.GPU_RIM_EXPIRED}
        return False
    return True


def _sub(pattern: bytes, repl: Callable[[re.Match[bytes]], bytes]) -> Callable[[bytes, bytes], bytes]:
    def apply(data: bytes, _other: bytes) -> bytes:
        out, count = re.subn(pattern, repl, data, count=1)
        assert count == 1, pattern
        return out

    return apply


def _other_leaf(data: bytes, other: bytes) -> bytes:
    first = re.compile(rb"(<(?:ds:)?X509Certificate>)([^<]+)(<)")
    theirs = first.search(other)
    assert theirs is not None
    return first.sub(lambda m: m[1] + theirs[2] + m[3], data, count=1)


def _flip_b64(m: re.Match[bytes]) -> bytes:
    text = bytearray(m[2])
    text[5] = ord("A") if text[5] != ord("A") else ord("B")
    return m[1] + bytes(text) + m[3]


TAMPERS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "golden-value": _sub(rb'(Hash0=")([0-9a-f])', lambda m: m[1] + (b"1" if m[2] != b"1" else b"2")),
    "version": _sub(rb'(colloquialVersion=")([^"]+)(")', lambda m: m[1] + b"999.99" + m[3]),
    "signature-value": _sub(rb"(<(?:ds:)?SignatureValue>)([^<]+)(<)", _flip_b64),
    "digest-value": _sub(rb"(<(?:ds:)?DigestValue>)([^<]+)(<)", _flip_b64),
    "inactive-to-active": _sub(rb'( active=")False(")', lambda m: m[1] + b"True" + m[2]),
    "foreign-leaf": _other_leaf,
    "no-signature": _sub(rb"(?s)<(ds:)?Signature[ >].*</(ds:)?Signature>", lambda _m: b""),
}


def _cases() -> list[tuple[str, str | None]]:
    return [(rim, None) for rim in RIMS] + [(rim, tamper) for rim in RIMS[:3] for tamper in TAMPERS]


@pytest.mark.parametrize(("rim", "tamper"), _cases(), ids=lambda v: v or "as-shipped")
@pytest.mark.parametrize("now", [INSIDE, TODAY], ids=["2024-06-01", "today"])
def test_verdicts_agree_with_xmlsec1(
    vectors: Path, xmlsec1: str, tmp_path: Path, rim: str, tamper: str | None, now: datetime
) -> None:
    data = (vectors / f"gpu/rims/{rim}.swidtag").read_bytes()
    if tamper is not None:
        other = (vectors / "gpu/rims/driver-gh100-535.86.09-mismatch.swidtag").read_bytes()
        data = TAMPERS[tamper](data, other if rim != "driver-gh100-535.86.09-mismatch" else data)
        assert data != (vectors / f"gpu/rims/{rim}.swidtag").read_bytes()
    path = tmp_path / "rim.xml"
    path.write_bytes(data)
    theirs = xmlsec1_accepts(xmlsec1, path, vectors / "gpu/certs/nvidia-rim-root.pem", now)
    ours = ours_accepts(data, now)
    assert ours == theirs, f"ours={ours} xmlsec1={theirs}"


def test_the_agreement_is_not_vacuous(vectors: Path, xmlsec1: str) -> None:
    root = vectors / "gpu/certs/nvidia-rim-root.pem"
    verdicts = {
        name: xmlsec1_accepts(xmlsec1, vectors / f"gpu/rims/{name}.swidtag", root, INSIDE) for name in RIMS
    }
    assert verdicts == {
        "driver-nvtrust-sample": True,
        "vbios-96005E0001-nvtrust-sample": True,
        "vbios-96005E0001-mismatch": True,
        "driver-gh100-535.86.09-mismatch": False,
        "driver-gh100-570.124.03-expired": False,
    }
