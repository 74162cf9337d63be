"""The signed SHA256SUMS beside a bundle tarball, on small made-up tarballs (no bundle build, no root):
both verifiers (the host's openssl for install.py, pynacl for the installed CLI) agree, and anything but
the genuine tarball named in genuinely signed sums is refused before extraction."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nacl.signing
import pytest

from sovereign.bundle import archive, keys
from sovereign.bundle.build import publish_beside
from sovereign.bundle.installer import (
    BundleCode,
    BundleError,
    Verifier,
    extract_archive,
    parse_sums,
    sums_for,
    verify_archive,
    verify_with_openssl,
)

VERIFIERS: dict[str, Verifier] = {"openssl": verify_with_openssl, "pynacl": keys.verify_with_nacl}


def _published(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A tiny tarball published as bundle build does; returns (tarball, public key, another key)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "install.sh").write_text("#!/bin/sh\n")
    tarball = tmp_path / "dist" / "sovereign-0.0.0-abc-cp311-x86_64-glibc2.34.tar.gz"
    tarball.parent.mkdir()
    archive.deterministic_tar(src, tarball, "sovereign-0.0.0-abc", 1_700_000_000, frozenset({"install.sh"}))
    key_path, public = keys.generate(tmp_path / "k", "release")
    _, other = keys.generate(tmp_path / "k", "other")
    publish_beside(tarball, b'{"manifest": 1}\n', keys.load_signing_key(key_path))
    return tarball, public, other


def _refused(tarball: Path, public: Path, verifier: Verifier) -> BundleCode:
    with pytest.raises(BundleError) as err:
        verify_archive(tarball, public, verifier)
    return err.value.code


@pytest.mark.parametrize("name", sorted(VERIFIERS))
def test_genuine_tarball_verifies_then_extracts(tmp_path: Path, name: str) -> None:
    tarball, public, _ = _published(tmp_path)
    assert (
        verify_archive(tarball, public, VERIFIERS[name]) == hashlib.sha256(tarball.read_bytes()).hexdigest()
    )
    top = extract_archive(tarball, tmp_path / "x")
    assert (top / "install.sh").is_file()
    sums = parse_sums(sums_for(tarball).read_bytes())
    assert sorted(sums) == sorted([tarball.name, tarball.name.replace(".tar.gz", ".manifest.json")])


@pytest.mark.parametrize("name", sorted(VERIFIERS))
def test_anything_else_is_refused_with_a_code(tmp_path: Path, name: str) -> None:
    verifier = VERIFIERS[name]
    tarball, public, other = _published(tmp_path)
    sums = sums_for(tarball)
    signature = sums.with_name(sums.name + ".sig")
    genuine_tar, genuine_sums, genuine_sig = tarball.read_bytes(), sums.read_bytes(), signature.read_bytes()

    assert _refused(tarball, other, verifier) is BundleCode.BUNDLE_SIGNATURE_INVALID
    assert _refused(tarball, tmp_path / "missing.pem", verifier) is BundleCode.BUNDLE_KEY_INVALID

    tarball.write_bytes(genuine_tar[:-1] + bytes([genuine_tar[-1] ^ 1]))
    assert _refused(tarball, public, verifier) is BundleCode.BUNDLE_ARCHIVE_MISMATCH
    tarball.write_bytes(genuine_tar)

    sums.write_bytes(genuine_sums.replace(b"0", b"1", 1))  # the signature no longer covers it
    assert _refused(tarball, public, verifier) is BundleCode.BUNDLE_SIGNATURE_INVALID
    sums.write_bytes(genuine_sums)

    signature.write_bytes(genuine_sig[:63])
    assert _refused(tarball, public, verifier) is BundleCode.BUNDLE_SIGNATURE_INVALID
    signature.unlink()
    assert _refused(tarball, public, verifier) is BundleCode.BUNDLE_FILE_MISSING
    signature.write_bytes(genuine_sig)

    renamed = tarball.with_name("sovereign-renamed.tar.gz")
    renamed.write_bytes(genuine_tar)
    sums.with_name("sovereign-renamed.SHA256SUMS").write_bytes(genuine_sums)
    sums.with_name("sovereign-renamed.SHA256SUMS.sig").write_bytes(genuine_sig)
    assert _refused(renamed, public, verifier) is BundleCode.BUNDLE_ARCHIVE_MISMATCH


@pytest.mark.parametrize(
    "listing",
    [b"", b"not a listing\n", b"0" * 64 + b" one-space\n", b"0" * 63 + b"  short\n", b"0" * 64 + b"  a/b\n",
     b"A" * 64 + b"  upper\n", (b"0" * 64 + b"  same\n") * 2, b"\xff" * 64 + b"  x\n"],
)  # fmt: skip
def test_a_signed_but_malformed_listing_is_refused(tmp_path: Path, listing: bytes) -> None:
    tarball, public, _ = _published(tmp_path)
    key = nacl.signing.SigningKey(bytes.fromhex((tmp_path / "k" / "release.key").read_text().strip()))
    sums = sums_for(tarball)
    sums.write_bytes(listing)
    sums.with_name(sums.name + ".sig").write_bytes(key.sign(listing).signature)
    code = _refused(tarball, public, keys.verify_with_nacl)
    assert code in (BundleCode.BUNDLE_MANIFEST_INVALID, BundleCode.BUNDLE_ARCHIVE_MISMATCH)
    if listing:
        assert code is BundleCode.BUNDLE_MANIFEST_INVALID
