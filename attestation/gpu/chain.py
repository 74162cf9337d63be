"""X.509 chains for NVIDIA devices and RIM signers: links, windows, pinned root (pure).

Both NVIDIA chains (device identity: leaf first, ending in the NVIDIA Device Identity CA; RIM signing:
leaf first, ending in the NVIDIA CoRIM root) are checked the same way: every certificate is signed by the
next one and named by it, every issuer is a CA allowed to sign certificates, the last one is self-signed and
pinned by SHA-256 in the trust store, and every certificate is valid at ``now``. The result of the link
checks is cached per chain (the chain's bytes are the key); the pin and ``now`` are re-checked every call.

NVIDIA's GH100 RIM intermediates encode pre-2050 dates as GeneralizedTime, which cryptography's strict
RFC 5280 path builder refuses, so the path is walked here with ``verify_directly_issued_by``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import X509_PARSE_ERRORS, AttestationError, ChainInvalid, Code

MAX_CHAIN = 8


@dataclass(frozen=True)
class Chain:
    """A chain whose links verified: leaf first, pinned root last."""

    certs: tuple[x509.Certificate, ...]
    ders: tuple[bytes, ...]
    not_before: datetime  # latest notBefore in the chain
    not_after: datetime  # earliest notAfter in the chain

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]

    def leaf_key(self) -> ec.EllipticCurvePublicKey:
        key = self._leaf_key
        if key is None:
            raise ChainInvalid("the leaf key is not ECDSA P-384", code=Code.GPU_CHAIN_UNTRUSTED)
        return key

    @cached_property
    def _leaf_key(self) -> ec.EllipticCurvePublicKey | None:
        # Loading a public key validates the curve point; cached chains load it once.
        key = self.leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            return None
        return key


def load_pem_chain(pem: bytes, code: Code) -> list[bytes]:
    """PEM certificates in file order, as DER."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except X509_PARSE_ERRORS as exc:
        raise ChainInvalid(f"certificate chain does not parse: {exc}", code=code) from exc
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(ku.key_cert_sign)


def _verify_links(ders: tuple[bytes, ...], code: Code, what: str) -> Chain:
    if not ders:
        raise ChainInvalid(f"{what} chain is empty", code=code)
    if len(ders) > MAX_CHAIN:
        raise ChainInvalid(f"{what} chain has {len(ders)} certificates (at most {MAX_CHAIN})", code=code)
    try:
        certs = tuple(x509.load_der_x509_certificate(d) for d in ders)
        for i, cert in enumerate(certs):
            unknown = [
                e.oid.dotted_string
                for e in cert.extensions
                if e.critical and isinstance(e.value, x509.UnrecognizedExtension)
            ]
            if unknown:
                raise ChainInvalid(
                    f"{what} certificate {i} has unknown critical extensions {unknown}", code=code
                )
        # The last certificate is trusted by its pinned fingerprint, so its self-signature adds nothing.
        for i, cert in enumerate(certs[:-1]):
            issuer = certs[i + 1]
            if not _is_ca(issuer):
                raise ChainInvalid(
                    f"{what} certificate {i + 1} ({issuer.subject.rfc4514_string()}) is not a CA", code=code
                )
            try:
                cert.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError) as exc:
                raise ChainInvalid(
                    f"{what} certificate {i} ({cert.subject.rfc4514_string()}) is not issued by "
                    f"{issuer.subject.rfc4514_string()}: {type(exc).__name__}",
                    code=code,
                ) from exc
        not_before = max(c.not_valid_before_utc for c in certs)
        not_after = min(c.not_valid_after_utc for c in certs)
    except AttestationError:
        raise
    except X509_PARSE_ERRORS as exc:
        raise ChainInvalid(f"{what} chain does not parse: {exc}", code=code) from exc
    return Chain(certs, ders, not_before, not_after)


class ChainCache:
    """Link checks remembered per chain bytes (bounded). Pins and windows are never cached."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: dict[tuple[bytes, ...], Chain] = {}

    def get(self, ders: tuple[bytes, ...], build: Callable[[], Chain]) -> Chain:
        with self._lock:
            hit = self._items.get(ders)
        if hit is not None:
            return hit
        chain = build()
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[ders] = chain
        return chain


def verify_chain(
    ders: Sequence[bytes],
    *,
    check_root: Callable[[bytes], None],
    now: datetime,
    code: Code,
    expired_code: Code,
    what: str,
    cache: ChainCache | None = None,
    allow_expired: bool = False,
) -> Chain:
    """Links (cached), then the pinned root and every window at ``now`` (never cached).

    ``allow_expired`` skips only the windows (an explicit policy choice for RIM signers); links and the
    pin are always checked.
    """
    key = tuple(map(bytes, ders))  # bytes(b) is b itself for bytes: no copy on the cached path
    chain = (
        cache.get(key, lambda: _verify_links(key, code, what)) if cache else _verify_links(key, code, what)
    )
    try:
        check_root(chain.ders[-1])
    except ChainInvalid as exc:
        remapped = code if exc.code == Code.UNTRUSTED_ROOT else exc.code
        raise ChainInvalid(exc.message, code=remapped) from exc
    if not allow_expired and not chain.not_before <= now <= chain.not_after:
        for i, cert in enumerate(chain.certs):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise ChainInvalid(
                    f"{what} certificate {i} ({cert.subject.rfc4514_string()}) is valid "
                    f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}, "
                    f"not at {now:%Y-%m-%dT%H:%M:%SZ}",
                    code=expired_code,
                )
    return chain
