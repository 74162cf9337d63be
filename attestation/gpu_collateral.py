"""NVIDIA GPU collateral in the offline store (pure): RIMs, OCSP responses and CRLs, and the lookup that
hands a GPU's evidence the RIMs and revocation answers ``attestation.gpu.verify_gpu`` takes.

Items: a RIM is the SWID tag exactly as NVIDIA's RIM service serves it (the base64 ``rim`` member of its
JSON, decoded); an OCSP response is the responder's DER; CRLs and the device CA certificates are ordinary
certificate/CRL items (named NVIDIA, routed here).

Freshness (rollback protection, ``attestation.freshness``): a RIM is about (product, version) and ranked by
(SWID tagVersion, its signer's notBefore); an OCSP answer is about one certificate (issuer key hash and
serial) and ranked by thisUpdate. An older one is refused; a RIM with the same rank but other content is
refused as a conflict (which one is NVIDIA's current word cannot be told).

Lookup: the RIM ids NVIDIA's verifiers use (``NV_GPU_DRIVER_GH100_<driver>``,
``NV_GPU_CC_DRIVER_GB100_<driver>``, ``NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS>``) are what
the connected side asks the RIM service for; the store finds RIMs by what their *signed* content says
(product and colloquialVersion), so an unsigned label can never pair a RIM with another version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509 import ocsp

from attestation.errors import X509_PARSE_ERRORS, AttestationError, ChainInvalid, Code, CollateralError
from attestation.gpu.evidence import GpuEvidence
from attestation.gpu.revocation import GpuCollateral, _key_hash, ocsp_signed_by
from attestation.gpu.rim import read_signed_rim, verify_rim
from attestation.gpu.spdm import (
    OPAQUE_CHIP_SKU,
    OPAQUE_DRIVER_VERSION,
    OPAQUE_PROJECT,
    OPAQUE_PROJECT_SKU,
    OPAQUE_VBIOS_VERSION,
    parse_report,
)
from attestation.gpu.verify import format_vbios_version
from attestation.trust import TrustStore

_LEAF_ERRORS: tuple[type[Exception], ...] = (*X509_PARSE_ERRORS, IndexError)
_STATUS = {
    ocsp.OCSPCertStatus.GOOD: "good",
    ocsp.OCSPCertStatus.REVOKED: "revoked",
    ocsp.OCSPCertStatus.UNKNOWN: "unknown",
}


def _rejected(
    message: str, hint: str = "fetch the GPU collateral again: sovereign collateral fetch --gpu"
) -> CollateralError:
    return CollateralError(message, code=Code.COLLATERAL_REJECTED, hint=hint)


def looks_like_rim(data: bytes) -> bool:
    """An XML SWID tag (classification only; ``read_rim`` checks it)."""
    head = data.lstrip()[:4096]
    return head.startswith(b"<") and b"SoftwareIdentity" in head


def load_ocsp(data: bytes) -> ocsp.OCSPResponse | None:
    """A successful OCSP response, or None if ``data`` is not one."""
    try:
        response = ocsp.load_der_ocsp_response(data)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return None
        _ = response.responses  # parsed lazily: read here, where a failure is "not an OCSP response"
        return response
    except X509_PARSE_ERRORS:
        return None


def is_nvidia_name(name: x509.Name) -> bool:
    return any("NVIDIA" in str(attr.value) for attr in name)


# -- RIMs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredRim:
    """What a stored RIM's signed content says, and its signer chain's window (not judged here)."""

    sha256: str
    data: bytes
    product: str
    version: str
    tag_version: int
    signed_at: datetime  # the signer certificate's notBefore
    not_before: datetime  # latest notBefore in the signer chain
    not_after: datetime  # earliest notAfter in the signer chain

    @property
    def subject(self) -> str:
        return f"gpuRim:{self.product}:{self.version}"

    @property
    def rank(self) -> tuple[int, datetime]:
        return (self.tag_version, self.signed_at)

    def describe(self) -> str:
        return f"RIM {self.product} {self.version} (tagVersion {self.tag_version})"


def read_rim(data: bytes) -> StoredRim:
    """The signed fields of a RIM (its XML signature checked with the leaf it carries); raises
    ``CollateralError`` (COLLATERAL_REJECTED) if it does not verify."""
    try:
        signed = read_signed_rim(data)
        certs = [x509.load_der_x509_certificate(d) for d in signed.ders]
    except AttestationError as exc:
        raise _rejected(f"RIM: {exc.code}: {exc.message}") from None
    except X509_PARSE_ERRORS as exc:
        raise _rejected(f"RIM signer chain does not parse: {exc}") from None
    return StoredRim(
        sha256=hashlib.sha256(data).hexdigest(),
        data=bytes(data),
        product=signed.product,
        version=signed.version,
        tag_version=signed.tag_version,
        signed_at=certs[0].not_valid_before_utc,
        not_before=max(c.not_valid_before_utc for c in certs),
        not_after=min(c.not_valid_after_utc for c in certs),
    )


# -- OCSP --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OcspAnswer:
    """One SingleResponse: which certificate it is about, what it says, and its window."""

    subject: str  # ocsp:<hash>:<issuer key hash>:<serial>
    serial: int
    status: str
    this_update: datetime
    next_update: datetime | None


def ocsp_answers(data: bytes) -> list[OcspAnswer]:
    response = load_ocsp(data)
    if response is None:
        raise CollateralError(
            "not a successful OCSP response", code=Code.COLLATERAL_MALFORMED, hint="fetch it again"
        )
    out = []
    for single in response.responses:
        subject = f"ocsp:{single.hash_algorithm.name}:{single.issuer_key_hash.hex()}:{single.serial_number:x}"
        out.append(
            OcspAnswer(
                subject,
                single.serial_number,
                _STATUS.get(single.certificate_status, "unknown"),
                single.this_update_utc,
                single.next_update_utc,
            )
        )
    return out


def describe_ocsp(data: bytes) -> str:
    try:
        answers = ocsp_answers(data)
    except AttestationError:
        return "?"
    if not answers:
        return "OCSP response (empty)"
    first = answers[0]
    more = f" +{len(answers) - 1}" if len(answers) > 1 else ""
    return f"OCSP {first.status} for serial {first.serial:x}"[:72] + more


def describe_rim(data: bytes) -> str:
    try:
        return read_rim(data).describe()
    except AttestationError:
        return "?"


# -- what the verifier gets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RimIds:
    """The RIM service ids for one GPU's evidence, and the signed (product, version) pairs they name."""

    chip: str  # GH100, GB100 (from the leaf certificate's name)
    driver_id: str
    vbios_id: str
    driver_version: str
    vbios_version: str


def _leaf_chip(evidence: GpuEvidence) -> str:
    try:
        leaf = x509.load_der_x509_certificate(evidence.chain[0])
        cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(cn[0].value).split()[0] if cn else ""
    except _LEAF_ERRORS:
        return ""


def rim_ids(evidence: GpuEvidence) -> RimIds:
    """NVIDIA's RIM ids for this evidence; raises ``AttestationError`` (GPU_REPORT_MALFORMED) if the report
    does not parse."""
    report = parse_report(evidence.report)
    chip = _leaf_chip(evidence)
    driver = report.opaque_text(OPAQUE_DRIVER_VERSION) or ""
    raw = report.opaque.get(OPAQUE_VBIOS_VERSION)
    vbios = format_vbios_version(raw) if raw is not None else ""
    prefix = "NV_GPU_CC_DRIVER_" if chip.startswith("GB") else "NV_GPU_DRIVER_"
    parts = [report.opaque_text(t) or "" for t in (OPAQUE_PROJECT, OPAQUE_PROJECT_SKU, OPAQUE_CHIP_SKU)]
    return RimIds(
        chip=chip,
        driver_id=f"{prefix}{chip or 'GH100'}_{driver}",
        vbios_id="NV_GPU_VBIOS_" + "_".join([*parts, vbios.replace(".", "").upper()]),
        driver_version=driver,
        vbios_version=vbios,
    )


@dataclass(frozen=True)
class GpuInputs:
    """What ``verify_gpu`` takes from the store for one GPU: absent RIMs are None (the verifier then says
    GPU_COLLATERAL_MISSING), revocation answers are the whole recorded set (it picks per certificate)."""

    ids: RimIds
    driver_rim: bytes | None
    vbios_rim: bytes | None
    collateral: GpuCollateral


class GpuStoreCollateral:
    """The store's GPU items, read once per store generation; ``revocation`` keeps its signature checks
    across verifications."""

    def __init__(
        self, rims: Sequence[bytes] = (), ocsp_responses: Sequence[bytes] = (), crls: Sequence[bytes] = ()
    ) -> None:
        self.rims: tuple[StoredRim, ...] = tuple(read_rim(d) for d in rims)
        self.revocation = GpuCollateral(ocsp_responses=ocsp_responses, crls=crls)
        self._by_version: dict[str, list[StoredRim]] = {}
        for rim in self.rims:
            self._by_version.setdefault(rim.version, []).append(rim)

    def __repr__(self) -> str:
        return f"GpuStoreCollateral(rims={len(self.rims)}, {self.revocation!r})"

    def rim(self, version: str, product: str = "") -> bytes | None:
        """The newest RIM whose signed version is ``version`` (and product, when the leaf names one)."""
        candidates = self._by_version.get(version, []) if version else []
        if product and any(r.product == product for r in candidates):
            candidates = [r for r in candidates if r.product == product]
        return max(candidates, key=lambda r: r.rank).data if candidates else None

    def rim_by_id(self, rim_id: str) -> bytes | None:
        """The RIM NVIDIA's RIM service names ``rim_id``, found by its signed product and version."""
        for prefix in ("NV_GPU_DRIVER_", "NV_GPU_CC_DRIVER_"):
            if rim_id.startswith(prefix):
                product, _, version = rim_id.removeprefix(prefix).partition("_")
                return self.rim(version, product)
        if rim_id.startswith("NV_GPU_VBIOS_"):
            compact = rim_id.rsplit("_", 1)[-1]
            if len(compact) == 10:
                return self.rim(".".join(compact[i : i + 2] for i in range(0, 10, 2)).upper())
        return None

    def inputs_for(self, evidence: GpuEvidence) -> GpuInputs:
        ids = rim_ids(evidence)
        return GpuInputs(
            ids=ids,
            driver_rim=self.rim(ids.driver_version, ids.chip),
            vbios_rim=self.rim(ids.vbios_version, ids.chip),
            collateral=self.revocation,
        )


# -- import checks ------------------------------------------------------------------------------------
def check_nvidia_root(trust: TrustStore, der: bytes) -> None:
    """A self-signed NVIDIA certificate must be one of the pinned device identity or RIM roots."""
    try:
        trust.check_nvidia_device_root(der)
    except ChainInvalid:
        trust.check_nvidia_rim_root(der)


def _chains_to_pin(cert: x509.Certificate, pool: Sequence[x509.Certificate], trust: TrustStore) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding

    current = cert
    for _ in range(8):
        if current.subject == current.issuer:
            try:
                check_nvidia_root(trust, current.public_bytes(Encoding.DER))
            except ChainInvalid:
                return False
            return True
        parent = next((p for p in pool if p.subject == current.issuer and _issued_by(current, p)), None)
        if parent is None:
            return False
        current = parent
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_gpu_items(
    *,
    certificates: Sequence[x509.Certificate],
    held_rims: Sequence[bytes],
    new_rims: Sequence[bytes],
    new_ocsp: Sequence[bytes],
    trust: TrustStore,
    now: datetime,
) -> list[str]:
    """Before storing: every new RIM verifies to the pinned RIM root (an expired signer is stored with a
    warning: ``collateral status`` shows it, the verifier refuses it unless policy accepts it); no two RIMs
    for the same version carry the same rank with different content; every answer of every new OCSP
    response is signed by its certificate's issuer (or a responder it delegated to), an issuer that chains
    to a pinned NVIDIA root among the known certificates. Raises on anything wrong; returns warnings."""
    warns: list[str] = []
    verified = []
    for data in new_rims:
        try:
            rim = verify_rim(data, trust=trust, now=now, accept_expired_certificates=True)
        except AttestationError as exc:
            raise _rejected(f"RIM refused: {exc.code}: {exc.message}") from None
        if rim.cert_expired:
            warns.append(
                f"RIM {rim.product} {rim.version}: its signer chain is not valid now (until {rim.valid_until:%Y-%m-%d})"
            )
        verified.append(rim)
    _check_rim_conflicts([read_rim(d) for d in held_rims], [read_rim(d) for d in new_rims])
    pool = list(certificates) + [c for rim in verified for c in rim.chain.certs]
    pool += [x509.load_der_x509_certificate(d) for held in held_rims for d in read_signed_rim(held).ders]
    for data in new_ocsp:
        _check_ocsp(data, pool, trust)
    return warns


def _check_rim_conflicts(held: Iterable[StoredRim], new: Sequence[StoredRim]) -> None:
    seen = {(rim.subject, rim.rank): rim for rim in held}
    for rim in new:
        other = seen.setdefault((rim.subject, rim.rank), rim)
        if other.sha256 != rim.sha256:
            raise _rejected(
                f"{rim.describe()} differs from a RIM already held with the same tagVersion and signer date",
                "two RIMs claim to be the same release; keep the one NVIDIA's RIM service serves now",
            )


def _check_ocsp(data: bytes, pool: Sequence[x509.Certificate], trust: TrustStore) -> None:
    response = load_ocsp(data)
    if response is None:
        raise CollateralError("not a successful OCSP response", code=Code.COLLATERAL_MALFORMED)
    for single in response.responses:
        issuers = [c for c in pool if _key_hash(c, single.hash_algorithm) == single.issuer_key_hash]
        if not any(
            ocsp_signed_by(response, issuer, response.produced_at_utc) and _chains_to_pin(issuer, pool, trust)
            for issuer in issuers
        ):
            raise _rejected(
                f"OCSP answer for serial {single.serial_number:x} is not signed by a known issuer that chains "
                "to a pinned NVIDIA root",
                "import the GPU's CA certificates with it (sovereign collateral fetch --gpu includes them)",
            )
