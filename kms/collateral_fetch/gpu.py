"""Connected side: NVIDIA GPU collateral for ``sovereign collateral fetch --gpu EVIDENCE``.

From GPU evidence the fleet produced (the SDK's JSON list, as ``attestation.gpu.parse_evidence_json``
reads it), this gathers what the air-gapped verifier needs and cannot ask for itself:

* the driver and VBIOS RIMs, by the ids NVIDIA's verifiers use, from the RIM service
  (``GET {rim}/v1/rim/{id}`` answers JSON whose ``rim`` member is the signed SWID tag in base64, with its
  ``sha256``);
* one OCSP response per certificate of every device chain from the issuer of the per-boot leaf up (the
  leaf itself has no OCSP entry) and of every RIM signer chain, the pinned root excluded, from NVIDIA's OCSP
  responder (``POST`` of a DER OCSP request, RFC 6960 A.1);
* the device chains' CA certificates, so the store can check each OCSP answer's signature on import.

Nothing is judged here beyond shape: the store verifies RIM signatures and chains and the OCSP signatures
on import, and the verifier everything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from attestation.collateral import CollateralItem, ItemKind
from attestation.errors import X509_PARSE_ERRORS, AttestationError, Code, CollateralError
from attestation.gpu.evidence import GpuEvidence, parse_evidence_json
from attestation.gpu.rim import read_signed_rim
from attestation.gpu_collateral import load_ocsp, looks_like_rim, rim_ids
from kms.collateral_fetch.fetcher import Fetcher
from kms.collateral_fetch.sources import Request

NVIDIA_RIM = "https://rim.attestation.nvidia.com"
NVIDIA_OCSP = "https://ocsp.ndis.nvidia.com"
_EVIDENCE_ERRORS: tuple[type[Exception], ...] = (AttestationError, *X509_PARSE_ERRORS)
_RIM_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def _failed(message: str, hint: str = "check the service URL and retry") -> CollateralError:
    return CollateralError(message, code=Code.COLLATERAL_FETCH_FAILED, hint=hint)


@dataclass
class GpuPlan:
    evidence: list[GpuEvidence] = field(default_factory=list)
    rim_ids: list[str] = field(default_factory=list)  # more RIM ids to fetch as they are

    def __bool__(self) -> bool:
        return bool(self.evidence or self.rim_ids)


def read_evidence(data: bytes, source: str) -> list[GpuEvidence]:
    """A ``--gpu`` file: the SDK's JSON evidence list (one entry per GPU)."""
    try:
        return parse_evidence_json(data)
    except AttestationError as exc:
        raise CollateralError(
            f"{source}: {exc.message}",
            code=Code.COLLATERAL_MALFORMED,
            hint='pass the GPU evidence JSON: [{"arch", "certificate": base64 PEM chain, "evidence": base64 report}]',
        ) from None


def _check_id(rim_id: str) -> str:
    if not rim_id or len(rim_id) > 128 or not set(rim_id) <= _RIM_ID_CHARS:
        raise CollateralError(
            f"RIM id {rim_id[:40]!r} is not an NVIDIA RIM id",
            code=Code.COLLATERAL_MALFORMED,
            hint="e.g. NV_GPU_DRIVER_GH100_550.90.07 or NV_GPU_VBIOS_1010_0200_882_96009F0001",
        )
    return rim_id


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class GpuFetcher:
    def __init__(
        self, fetcher: Fetcher, *, rim_base: str | None = None, ocsp_base: str | None = None
    ) -> None:
        self.fetcher = fetcher
        self.rim = (rim_base or NVIDIA_RIM).rstrip("/")
        self.ocsp = (ocsp_base or NVIDIA_OCSP).rstrip("/")

    def fetch(self, plan: GpuPlan) -> list[tuple[CollateralItem, str]]:
        """RIMs, CA certificates and OCSP responses for the plan, as (item, source); raises
        ``CollateralError`` on any failure (a missing RIM is COLLATERAL_NOT_FOUND)."""
        items: list[tuple[CollateralItem, str]] = []
        ids: list[str] = []
        pairs: list[tuple[x509.Certificate, x509.Certificate]] = []
        for n, evidence in enumerate(plan.evidence):
            try:
                named = rim_ids(evidence)
                chain = [x509.load_der_x509_certificate(d) for d in evidence.chain]
            except _EVIDENCE_ERRORS as exc:
                raise CollateralError(
                    f"GPU evidence {n} does not parse: {exc}", code=Code.COLLATERAL_MALFORMED
                ) from None
            ids += [named.driver_id, named.vbios_id]
            items += [(CollateralItem(ItemKind.CERTIFICATE, _der(c)), f"GPU evidence {n}") for c in chain[1:]]
            pairs += [(chain[i], chain[i + 1]) for i in range(1, len(chain) - 1)]
        for rim_id in _unique(ids + [_check_id(i) for i in plan.rim_ids]):
            url = f"{self.rim}/v1/rim/{rim_id}"
            rim = self._rim(url)
            items.append((CollateralItem(ItemKind.GPU_RIM, rim), url))
            signers = [x509.load_der_x509_certificate(d) for d in read_signed_rim(rim).ders]
            pairs += [(signers[i], signers[i + 1]) for i in range(len(signers) - 1)]
        seen: set[tuple[bytes, int]] = set()
        for cert, issuer in pairs:
            key = (hashlib.sha256(_der(issuer)).digest(), cert.serial_number)
            if key not in seen:
                seen.add(key)
                items.append((CollateralItem(ItemKind.OCSP_RESPONSE, self._ocsp(cert, issuer)), self.ocsp))
        return items

    def _rim(self, url: str) -> bytes:
        body = self.fetcher.response(Request(url)).body
        try:
            doc = json.loads(body)
            encoded = doc["rim"]
            rim = base64.b64decode(encoded, validate=True)
        except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):
            raise _failed(f"{url}: not a RIM service answer (JSON with a base64 'rim')") from None
        digest = doc.get("sha256")
        if digest is not None and digest != hashlib.sha256(rim).hexdigest():
            raise _failed(f"{url}: the RIM does not match the sha256 the service sent with it")
        if not looks_like_rim(rim):
            raise _failed(f"{url}: the 'rim' member is not a SWID tag")
        try:
            read_signed_rim(rim)
        except AttestationError as exc:
            raise _failed(
                f"{url}: {exc.code}: {exc.message}", "NVIDIA's answer was altered or is broken; retry"
            ) from None
        return rim

    def _ocsp(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
        der = request.public_bytes(serialization.Encoding.DER)
        url = self.ocsp + "/"
        body = self.fetcher.response(Request(url, body=der, content_type="application/ocsp-request")).body
        response = load_ocsp(body)
        if response is None:
            raise _failed(f"{url}: no successful OCSP response for serial {cert.serial_number:x}")
        if not any(s.serial_number == cert.serial_number for s in response.responses):
            raise _failed(f"{url}: the OCSP response does not answer serial {cert.serial_number:x}")
        return body
