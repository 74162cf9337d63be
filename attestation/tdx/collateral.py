"""Immutable, pre-verified Intel collateral for TDX: TCB infos by FMSPC, TD_QE identities, CRLs, certs.

Signatures of TCB infos and QE identities are verified once, when the collateral is built, against the
TCB Signing certificates among ``certs`` (which must chain to a self-signed root among ``certs``). What
depends on the verification call (the trust store, ``now``) is checked per call: the root is pinned, and
every certificate, CRL and JSON document must be inside its validity window. CRL signatures are checked
against the quote's own PCK CA / root the first time that pair is seen, and remembered.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import X509_PARSE_ERRORS, ChainInvalid, Code, CollateralError
from attestation.tdx import pcs
from attestation.tdx.pck import PckChain, chain_error
from attestation.trust import TrustStore, fingerprint

DocT = TypeVar("DocT", pcs.TcbInfo, pcs.QeIdentity)
TCB_INFO = "tcbInfo"
QE_IDENTITY = "enclaveIdentity"
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_IMPORT_HINT = "import current Intel collateral for this platform: sovereign collateral import FILE"


def check_root(trust: TrustStore, root_der: bytes, root_sha256: str) -> None:
    """``trust.check_intel_root`` with the fingerprint computed once (it raises with the reason)."""
    if root_sha256 not in trust.intel_roots:
        trust.check_intel_root(root_der)


def raw_signature_to_der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"))


def _expired(what: str, start: datetime, end: datetime, now: datetime) -> CollateralError:
    return CollateralError(
        f"{what} is valid {start.isoformat()} .. {end.isoformat()}, not at {now.isoformat()}",
        code=Code.TDX_COLLATERAL_EXPIRED,
        hint="import fresh Intel collateral (TCB info, QE identity, CRLs), or check the time (--at)",
    )


def _missing(message: str) -> CollateralError:
    return CollateralError(message, code=Code.TDX_COLLATERAL_MISSING, hint=_IMPORT_HINT)


@dataclass(frozen=True, slots=True)
class SignedItem:
    """A PCS JSON document reduced to what matters: the exact signed bytes and the r||s signature."""

    kind: str  # TCB_INFO or QE_IDENTITY
    body: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Signer:
    """A TCB Signing certificate that verified a document, and the root it chains to."""

    cert: x509.Certificate
    root: x509.Certificate
    root_der: bytes
    root_sha256: str
    serial: int
    not_before: datetime  # intersection of the signer's and the root's validity
    not_after: datetime

    @classmethod
    def of(cls, cert: x509.Certificate, root: x509.Certificate) -> Signer:
        root_der = root.public_bytes(serialization.Encoding.DER)
        return cls(
            cert,
            root,
            root_der,
            fingerprint(root_der),
            cert.serial_number,
            max(cert.not_valid_before_utc, root.not_valid_before_utc),
            min(cert.not_valid_after_utc, root.not_valid_after_utc),
        )

    def check(self, trust: TrustStore, now: datetime) -> None:
        check_root(trust, self.root_der, self.root_sha256)
        if self.not_before <= now <= self.not_after:
            return
        for name, cert in (("TCB Signing", self.cert), ("its root CA", self.root)):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise chain_error(
                    f"{name} certificate is valid {cert.not_valid_before_utc.isoformat()} .. "
                    f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
                    code=Code.TDX_CERT_EXPIRED,
                    hint="import the current Intel TCB Signing certificate chain, or check --at",
                )


@dataclass(frozen=True, slots=True)
class Verified(Generic[DocT]):
    """A TCB info or QE identity whose signature verified with each of ``signers``."""

    doc: DocT
    signers: tuple[Signer, ...]
    issue_date: datetime
    next_update: datetime
    number: int  # tcbEvaluationDataNumber

    def current(self, now: datetime) -> bool:
        return self.issue_date <= now <= self.next_update

    def signer_at(self, what: str, trust: TrustStore, now: datetime) -> Signer:
        """A signer whose chain is pinned and valid at ``now`` (re-issued Intel certs share a key)."""
        first: ChainInvalid | None = None
        for signer in self.signers:
            try:
                signer.check(trust, now)
            except ChainInvalid as exc:
                first = first or exc
                continue
            return signer
        if first is None:  # cannot happen: only documents with a verified signer are kept
            raise _missing(f"{what}: no TCB Signing certificate")
        raise ChainInvalid(f"{what}: {first.message}", code=first.code, hint=first.hint)


@dataclass(frozen=True, slots=True)
class Crl:
    crl: x509.CertificateRevocationList
    issuer_der: bytes
    this_update: datetime
    next_update: datetime
    revoked: frozenset[int]


def _pick_current(items: Iterable[Verified[DocT]], what: str, now: datetime) -> Verified[DocT]:
    items = list(items)
    current = [v for v in items if v.current(now)]
    if not current:
        newest = max(items, key=lambda v: (v.number, v.issue_date))
        raise _expired(what, newest.issue_date, newest.next_update, now)
    return max(current, key=lambda v: (v.number, v.issue_date))


@dataclass(frozen=True, eq=False)
class TdxCollateral:
    """Build with ``from_items`` / ``parse_collateral_bundle``; combine with ``merged``. Immutable."""

    signed_items: tuple[SignedItem, ...] = ()
    crl_ders: tuple[bytes, ...] = ()
    cert_ders: tuple[bytes, ...] = ()
    tcb_infos: Mapping[bytes, tuple[Verified[pcs.TcbInfo], ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    qe_identities: tuple[Verified[pcs.QeIdentity], ...] = ()
    crls: tuple[Crl, ...] = ()
    unverifiable: tuple[str, ...] = ()  # documents present without any TCB Signing cert to check them
    # memo of CRL signatures already verified: (CRL index, issuer key id); not part of the value
    _crl_checked: set[tuple[int, bytes]] = field(default_factory=set, init=False, repr=False)

    @classmethod
    def from_items(
        cls,
        *,
        tcb_infos: Iterable[bytes] = (),
        qe_identities: Iterable[bytes] = (),
        crls: Iterable[bytes] = (),
        certs: Iterable[bytes] = (),
    ) -> TdxCollateral:
        """Raw PCS JSON bodies, CRLs (DER, PEM or hex DER) and certificates (DER or PEM)."""
        signed = [SignedItem(TCB_INFO, *pcs.split_signed(bytes(raw), TCB_INFO)) for raw in tcb_infos]
        signed += [
            SignedItem(QE_IDENTITY, *pcs.split_signed(bytes(raw), QE_IDENTITY)) for raw in qe_identities
        ]
        crl_ders = [_crl_der(bytes(raw)) for raw in crls]
        cert_ders = [der for raw in certs for der in _cert_ders(bytes(raw))]
        return _build(signed, crl_ders, cert_ders)

    def merged(self, other: TdxCollateral) -> TdxCollateral:
        """Everything of both (re-verified together, so documents may now find their signer)."""
        return _build(
            [*self.signed_items, *other.signed_items],
            [*self.crl_ders, *other.crl_ders],
            [*self.cert_ders, *other.cert_ders],
        )

    # --- per-verification lookups (pure functions of the collateral, the trust store and now) ---

    def tcb_info(
        self, fmspc: bytes, trust: TrustStore, now: datetime
    ) -> tuple[Verified[pcs.TcbInfo], Signer]:
        """The current TCB info for ``fmspc`` and the (pinned, valid) TCB Signing cert that signed it."""
        items = self.tcb_infos.get(fmspc)
        if not items:
            unchecked = f"tcbInfo {fmspc.hex()}" in self.unverifiable
            raise _missing(
                f"no TDX TCB info for FMSPC {fmspc.hex()}"
                + (" (one is present, but no TCB Signing certificate chain to check it)" if unchecked else "")
            )
        chosen = _pick_current(items, f"TCB info for FMSPC {fmspc.hex()}", now)
        return chosen, chosen.signer_at("TCB info", trust, now)

    def qe_identity(self, trust: TrustStore, now: datetime) -> tuple[Verified[pcs.QeIdentity], Signer]:
        """The current TD_QE identity and the (pinned, valid) TCB Signing cert that signed it."""
        if not self.qe_identities:
            unchecked = "TD_QE identity" in self.unverifiable
            raise _missing(
                "no TD_QE identity"
                + (" (one is present, but no TCB Signing certificate chain to check it)" if unchecked else "")
            )
        chosen = _pick_current(self.qe_identities, "TD_QE identity", now)
        return chosen, chosen.signer_at("QE identity", trust, now)

    def crl_for(
        self, issuer_der: bytes, issuer_key_id: bytes, issuer: x509.Certificate, what: str, now: datetime
    ) -> Crl:
        """The current CRL issued under ``issuer_der`` and signed by ``issuer`` (checked once per key)."""
        indexed = [(n, c) for n, c in enumerate(self.crls) if c.issuer_der == issuer_der]
        if not indexed:
            raise _missing(f"no {what} in the collateral")
        current = [(n, c) for n, c in indexed if c.this_update <= now <= c.next_update]
        if not current:
            newest = max((c for _, c in indexed), key=lambda c: c.this_update)
            raise _expired(what, newest.this_update, newest.next_update, now)
        # Newest first; a same-named CRL from another key (e.g. a test PKI in the same store) is skipped.
        for n, crl in sorted(current, key=lambda nc: nc[1].this_update, reverse=True):
            if (n, issuer_key_id) in self._crl_checked or _crl_signed_by(crl, issuer):
                self._crl_checked.add((n, issuer_key_id))
                return crl
        raise CollateralError(
            f"{what} is not signed by the key of its issuer",
            code=Code.TDX_COLLATERAL_SIGNATURE_INVALID,
            hint="the CRL is corrupted or not Intel's; import it again from Intel PCS",
        )

    def check_revocation(self, chain: PckChain, now: datetime, signers: Iterable[Signer] = ()) -> list[Crl]:
        """PCK leaf against the PCK CRL; PCK CA, TCB Signing certs and root against the root CRL."""
        pck_crl = self.crl_for(
            chain.leaf_issuer_der, chain.intermediate_spki, chain.intermediate, "PCK CRL", now
        )
        root_crl = self.crl_for(chain.root_subject_der, chain.root_der, chain.root, "root CA CRL", now)
        leaf_serial, ca_serial, root_serial = chain.serials
        checks = [("PCK leaf", leaf_serial, pck_crl), ("PCK CA", ca_serial, root_crl)]
        checks += [("root CA", root_serial, root_crl)]
        for signer in signers:
            if signer.root_der != chain.root_der:
                raise CollateralError(
                    "the TCB Signing certificate chains to another root than the quote's PCK chain",
                    code=Code.TDX_COLLATERAL_MISMATCH,
                    hint="import Intel collateral issued under the same root as the platform's PCK",
                )
            checks.append(("TCB Signing", signer.serial, root_crl))
        for name, serial, crl in checks:
            if serial in crl.revoked:
                raise chain_error(
                    f"{name} certificate (serial {serial:#x}) is revoked by Intel's CRL",
                    code=Code.TDX_CERT_REVOKED,
                    hint="the platform's certificate was revoked by Intel; it cannot be trusted",
                )
        return [pck_crl, root_crl]


def _crl_signed_by(crl: Crl, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    try:
        return isinstance(key, ec.EllipticCurvePublicKey) and crl.crl.is_signature_valid(key)
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def merge(a: TdxCollateral, b: TdxCollateral) -> TdxCollateral:
    return a.merged(b)


def parse_collateral_bundle(data: bytes) -> TdxCollateral:
    """The dcap-qvl ``QuoteCollateralV3`` JSON: TCB info and QE identity as exact signed text with hex
    signatures, their issuer chains (PEM), the PCK CRL and root CA CRL (hex DER) and the CRL chain."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise pcs.invalid("collateral bundle is not JSON") from None
    keys = (
        "tcb_info",
        "tcb_info_signature",
        "qe_identity",
        "qe_identity_signature",
        "pck_crl",
        "root_ca_crl",
    )
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in keys):
        raise pcs.invalid(f"collateral bundle must be an object with string fields {', '.join(keys)}")
    chains = [
        doc.get(k, "") for k in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain")
    ]
    if not all(isinstance(c, str) for c in chains):
        raise pcs.invalid("collateral bundle issuer chains must be PEM strings")
    signed = [
        SignedItem(TCB_INFO, doc["tcb_info"].encode("utf-8"), _hex_signature(doc["tcb_info_signature"])),
        SignedItem(
            QE_IDENTITY, doc["qe_identity"].encode("utf-8"), _hex_signature(doc["qe_identity_signature"])
        ),
    ]
    crls = [_crl_der(doc["pck_crl"].encode()), _crl_der(doc["root_ca_crl"].encode())]
    certs = [der for chain in chains if chain for der in _cert_ders(chain.encode())]
    return _build(signed, crls, certs)


def _hex_signature(value: str) -> bytes:
    return pcs.parse_signature(value)


# --- building ------------------------------------------------------------------------------------------


def _cert_ders(raw: bytes) -> list[bytes]:
    if b"-----BEGIN" in raw:
        try:
            certs = x509.load_pem_x509_certificates(raw)
        except X509_PARSE_ERRORS:
            raise pcs.invalid("certificate PEM does not parse") from None
        return [c.public_bytes(serialization.Encoding.DER) for c in certs]
    return [raw]


def _crl_der(raw: bytes) -> bytes:
    stripped = raw.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_crl(stripped).public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise pcs.invalid("CRL PEM does not parse") from None
    if stripped[:2].lower() == b"30" and all(c in b"0123456789abcdefABCDEF" for c in stripped):
        try:
            return binascii.unhexlify(stripped)
        except binascii.Error:
            raise pcs.invalid("hex CRL does not decode") from None
    return raw


def _load_cert(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except X509_PARSE_ERRORS:
        raise pcs.invalid("a collateral certificate is not DER X.509") from None


def _load_crl(der: bytes) -> Crl:
    try:
        crl = x509.load_der_x509_crl(der)
        revoked = frozenset(r.serial_number for r in crl)
    except ValueError:
        raise pcs.invalid("a CRL is not DER X.509 CRL") from None
    if crl.next_update_utc is None:
        raise pcs.invalid("a CRL has no nextUpdate")
    return Crl(
        crl=crl,
        issuer_der=crl.issuer.public_bytes(),
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked=revoked,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _signers(certs: list[x509.Certificate]) -> list[Signer]:
    roots = [c for c in certs if _is_ca(c) and _issued_by(c, c)]
    out = []
    for cert in certs:
        if _is_ca(cert) or not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            continue
        for root in roots:
            if _issued_by(cert, root):
                out.append(Signer.of(cert, root))
    return out


def _verify_item(item: SignedItem, signers: list[Signer]) -> tuple[Signer, ...]:
    der = raw_signature_to_der(item.signature)
    ok = []
    for signer in signers:
        key = signer.cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        try:
            key.verify(der, item.body, _ECDSA_SHA256)
        except InvalidSignature:
            continue
        ok.append(signer)
    return tuple(ok)


def _verified(doc: DocT, signers: tuple[Signer, ...]) -> Verified[DocT]:
    return Verified(doc, signers, doc.issue_date, doc.next_update, doc.evaluation_data_number)


def _dedupe(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _build(signed: list[SignedItem], crl_ders: list[bytes], cert_ders: list[bytes]) -> TdxCollateral:
    try:
        return _build_checked(_dedupe(signed), _dedupe(crl_ders), _dedupe(cert_ders))
    except X509_PARSE_ERRORS:  # cryptography parses some certificate and CRL fields lazily
        raise pcs.invalid("a collateral certificate or CRL has a field that does not parse") from None


def _build_checked(signed: list[SignedItem], crl_ders: list[bytes], cert_ders: list[bytes]) -> TdxCollateral:
    signers = _signers([_load_cert(der) for der in cert_ders])
    tcb_infos: dict[bytes, list[Verified[pcs.TcbInfo]]] = {}
    qe_identities: list[Verified[pcs.QeIdentity]] = []
    unverifiable: list[str] = []
    for item in signed:
        body = pcs.parse_body(item.body)
        doc: pcs.TcbInfo | pcs.QeIdentity
        if item.kind == TCB_INFO:
            doc = pcs.parse_tcb_info(body)
            label = f"tcbInfo {doc.fmspc.hex()}"
        else:
            doc = pcs.parse_qe_identity(body)
            label = "TD_QE identity"
        if not signers:
            unverifiable.append(label)
            continue
        ok = _verify_item(item, signers)
        if not ok:
            raise CollateralError(
                f"{label} (sha256 {hashlib.sha256(item.body).hexdigest()[:16]}...) is not signed by any "
                "TCB Signing certificate in the collateral",
                code=Code.TDX_COLLATERAL_SIGNATURE_INVALID,
                hint="the document was altered or its TCB Signing chain is missing; import it again from PCS",
            )
        if isinstance(doc, pcs.TcbInfo):
            tcb_infos.setdefault(doc.fmspc, []).append(_verified(doc, ok))
        else:
            qe_identities.append(_verified(doc, ok))
    return TdxCollateral(
        signed_items=tuple(signed),
        crl_ders=tuple(crl_ders),
        cert_ders=tuple(cert_ders),
        tcb_infos=MappingProxyType({fmspc: tuple(v) for fmspc, v in tcb_infos.items()}),
        qe_identities=tuple(qe_identities),
        crls=tuple(_load_crl(der) for der in crl_ders),
        unverifiable=tuple(unverifiable),
    )
