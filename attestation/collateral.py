"""Collateral items and the in-memory collateral set the verifiers consume (pure, no I/O).

An item is one certificate (DER), one CRL (DER), one Intel TCB info or QE identity JSON body exactly as
Intel's provisioning service serves it, or one dcap-qvl style collateral bundle. ``classify`` turns any
file an operator may hold (PEM or DER, single or chained, JSON) into items; ``Collateral.from_items``
routes them to the SNP and TDX indices by issuer/subject name.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from attestation import gpu_collateral
from attestation.errors import X509_PARSE_ERRORS, Code, CollateralError
from attestation.gpu_collateral import GpuStoreCollateral
from attestation.snp import SnpCollateral
from attestation.tdx import TdxCollateral, parse_collateral_bundle

MAX_ITEM_BYTES = 4 << 20
_DESCRIBE_ERRORS: tuple[type[Exception], ...] = (*X509_PARSE_ERRORS, AttributeError, RecursionError)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s.*?-----END \1-----", re.DOTALL)


class ItemKind(StrEnum):
    CERTIFICATE = "certificate"
    CRL = "crl"
    TDX_TCB_INFO = "tdx-tcb-info"
    TDX_QE_IDENTITY = "tdx-qe-identity"
    TDX_BUNDLE = "tdx-collateral-bundle"
    GPU_RIM = "gpu-rim"  # NVIDIA reference integrity manifest (SWID tag with an XML signature)
    OCSP_RESPONSE = "ocsp-response"  # NVIDIA OCSP responder's answer (DER) for a GPU or RIM chain


@dataclass(frozen=True)
class CollateralItem:
    kind: ItemKind
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> str:
        """A one-line human description (subject / issuer / id), never failing."""
        try:
            if self.kind is ItemKind.CERTIFICATE:
                return _cn(load_certificate(self.data).subject)
            if self.kind is ItemKind.CRL:
                return "CRL by " + _cn(x509.load_der_x509_crl(self.data).issuer)
            if self.kind is ItemKind.GPU_RIM:
                return gpu_collateral.describe_rim(self.data)
            if self.kind is ItemKind.OCSP_RESPONSE:
                return gpu_collateral.describe_ocsp(self.data)
            doc = json.loads(self.data)
            inner = doc.get("tcbInfo") or doc.get("enclaveIdentity") or doc
            return f"{inner.get('id', 'bundle')} {inner.get('fmspc', '')}".strip()
        except _DESCRIBE_ERRORS:
            return "?"


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def load_certificate(der: bytes) -> x509.Certificate:
    """A DER certificate as cryptography reads it; ``ValueError`` for anything it cannot read."""
    with warnings.catch_warnings():
        # AMD VCEK/VLEK certificates carry serial number 0 (see attestation.snp for the fallback).
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            cert = x509.load_der_x509_certificate(der)
            _ = cert.subject
        except X509_PARSE_ERRORS as exc:  # callers handle ValueError
            raise ValueError(f"not an X.509 certificate: {type(exc).__name__}") from None
    return cert


def _der_item(der: bytes, source: str) -> CollateralItem:
    try:
        load_certificate(der)
        return CollateralItem(ItemKind.CERTIFICATE, der)
    except ValueError:
        pass
    try:
        x509.load_der_x509_crl(der)
        return CollateralItem(ItemKind.CRL, der)
    except X509_PARSE_ERRORS:
        pass
    if gpu_collateral.load_ocsp(der) is not None:
        return CollateralItem(ItemKind.OCSP_RESPONSE, der)
    raise CollateralError(
        f"{source}: not a certificate, CRL, OCSP response, RIM, PEM file or Intel collateral JSON",
        code=Code.COLLATERAL_MALFORMED,
        hint="import AMD/Intel/NVIDIA certificates (PEM/DER), CRLs, TCB info or QE identity JSON, NVIDIA RIMs "
        "or OCSP responses",
    )


def _pem_items(data: bytes, source: str) -> list[CollateralItem]:
    import base64
    import binascii

    items = []
    for block in _PEM_BLOCK.finditer(data):
        label = block.group(1)
        body = b"".join(block.group(0).splitlines()[1:-1])
        try:
            der = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise CollateralError(f"{source}: PEM block {label.decode()} is not base64") from None
        if label not in (b"CERTIFICATE", b"X509 CRL"):
            raise CollateralError(f"{source}: unexpected PEM block {label.decode()}")
        items.append(_der_item(der, source))
    return items


def _json_items(data: bytes, source: str) -> list[CollateralItem]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CollateralError(f"{source}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise CollateralError(f"{source}: JSON collateral must be an object")
    if "tcbInfo" in doc:
        return [CollateralItem(ItemKind.TDX_TCB_INFO, data)]
    if "enclaveIdentity" in doc:
        return [CollateralItem(ItemKind.TDX_QE_IDENTITY, data)]
    if "tcb_info" in doc and "qe_identity" in doc:
        return [CollateralItem(ItemKind.TDX_BUNDLE, data)]
    raise CollateralError(
        f"{source}: JSON is neither Intel TCB info, QE identity nor a collateral bundle",
        hint="expected {'tcbInfo': ...}, {'enclaveIdentity': ...} or a bundle with tcb_info and qe_identity",
    )


def classify(data: bytes, source: str = "<input>") -> list[CollateralItem]:
    """Split one file's bytes into collateral items, or raise ``CollateralError``."""
    if not data:
        raise CollateralError(f"{source}: empty file")
    if len(data) > MAX_ITEM_BYTES:
        raise CollateralError(f"{source}: {len(data)} bytes is larger than any collateral item")
    stripped = data.strip(b"\x00 \t\r\n")
    if gpu_collateral.looks_like_rim(stripped):
        return [CollateralItem(ItemKind.GPU_RIM, data)]
    if stripped.startswith(b"{"):
        return _json_items(stripped, source)
    if b"-----BEGIN " in data:
        items = _pem_items(data, source)
        if items:
            return items
    return [_der_item(data, source)]


def _unreadable(what: str, index: int, exc: Exception) -> CollateralError:
    return CollateralError(
        f"collateral item #{index + 1}: the {what} does not parse ({type(exc).__name__})",
        code=Code.COLLATERAL_MALFORMED,
        hint="import certificates and CRLs exactly as AMD's KDS or Intel's PCS serve them",
    )


def _certificate(der: bytes, index: int) -> x509.Certificate:
    try:
        cert = load_certificate(der)
        _ = cert.issuer  # parsed lazily: read it here, where a failure can be named
    except X509_PARSE_ERRORS as exc:
        raise _unreadable("certificate", index, exc) from None
    return cert


def _crl_issuer(der: bytes, index: int) -> str:
    try:
        return _cn(x509.load_der_x509_crl(der).issuer)
    except X509_PARSE_ERRORS as exc:
        raise _unreadable("CRL", index, exc) from None


def _is_amd(cert: x509.Certificate) -> bool:
    names = (_cn(cert.subject), _cn(cert.issuer))
    return any(n.startswith(("ARK-", "SEV-", "ASK-")) for n in names)


def _is_nvidia(cert: x509.Certificate) -> bool:
    return gpu_collateral.is_nvidia_name(cert.subject) or gpu_collateral.is_nvidia_name(cert.issuer)


@dataclass(frozen=True)
class Collateral:
    """Everything the verifiers may use, indexed per TEE. Build once; reuse for many verifications."""

    snp: SnpCollateral
    tdx: TdxCollateral
    gpu: GpuStoreCollateral = field(default_factory=GpuStoreCollateral)

    @classmethod
    def empty(cls) -> Collateral:
        return cls.from_items(())

    @classmethod
    def from_items(cls, items: Iterable[CollateralItem]) -> Collateral:
        amd_certs: list[bytes] = []
        amd_crls: list[bytes] = []
        intel_certs: list[bytes] = []
        intel_crls: list[bytes] = []
        tcb_infos: list[bytes] = []
        qe_identities: list[bytes] = []
        bundles: list[bytes] = []
        rims: list[bytes] = []
        ocsp_responses: list[bytes] = []
        gpu_crls: list[bytes] = []
        for i, item in enumerate(items):
            if item.kind is ItemKind.CERTIFICATE:
                cert = _certificate(item.data, i)
                if _is_nvidia(cert):
                    continue  # GPU chains travel with the evidence; these only let imports check OCSP answers
                (amd_certs if _is_amd(cert) else intel_certs).append(item.data)
            elif item.kind is ItemKind.CRL:
                issuer = _crl_issuer(item.data, i)
                if "NVIDIA" in issuer:
                    gpu_crls.append(item.data)
                else:
                    (amd_crls if issuer.startswith(("ARK-", "SEV-")) else intel_crls).append(item.data)
            elif item.kind is ItemKind.GPU_RIM:
                rims.append(item.data)
            elif item.kind is ItemKind.OCSP_RESPONSE:
                ocsp_responses.append(item.data)
            elif item.kind is ItemKind.TDX_TCB_INFO:
                tcb_infos.append(item.data)
            elif item.kind is ItemKind.TDX_QE_IDENTITY:
                qe_identities.append(item.data)
            else:
                bundles.append(item.data)
        tdx = TdxCollateral.from_items(
            tcb_infos=tcb_infos, qe_identities=qe_identities, crls=intel_crls, certs=intel_certs
        )
        for bundle in bundles:
            tdx = tdx.merged(parse_collateral_bundle(bundle))
        return cls(
            snp=SnpCollateral.from_der(amd_certs, amd_crls),
            tdx=tdx,
            gpu=GpuStoreCollateral(rims, ocsp_responses, gpu_crls),
        )
