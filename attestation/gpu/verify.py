"""NVIDIA GPU evidence verification: report -> device chain -> pinned root, RIMs, revocation -> claims (pure).

Order of checks, each with its own code (the first failing check decides):

1. parse the SPDM request || response by structure (``GPU_REPORT_MALFORMED``);
2. device chain links and the pinned NVIDIA Device Identity root (``GPU_CHAIN_UNTRUSTED``), windows at
   ``now`` (``GPU_CERT_EXPIRED``);
3. ECDSA P-384 signature over request || response-without-signature with the leaf (``GPU_SIGNATURE_INVALID``);
4. the leaf's FWID against the report's FWID record when the report has one (``GPU_FWID_MISMATCH``);
5. the requester nonce against the one passed in (``GPU_NONCE_MISMATCH``);
6. revocation of the device chain from offline OCSP/CRL collateral (``GPU_REVOKED``,
   ``GPU_COLLATERAL_MISSING``/``EXPIRED``);
7. the driver and VBIOS RIMs: signature, chain to the pinned RIM root, windows, revocation
   (``GPU_RIM_INVALID``/``UNTRUSTED``/``EXPIRED``, ``GPU_REVOKED``...);
8. every active golden measurement against the report (``GPU_RIM_INDEX_CONFLICT``,
   ``GPU_MEASUREMENT_MISMATCH``).

Which RIM versions a policy wants, minimum drivers, CC mode and GPU counts are policy, not judged here.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import (
    AttestationError,
    Code,
    CollateralError,
    EndorsementMismatch,
    MalformedEvidence,
    SignatureInvalid,
)
from attestation.gpu.chain import Chain, ChainCache, verify_chain
from attestation.gpu.compare import Golden, compare, merge_golden, prepare_golden
from attestation.gpu.evidence import GpuEvidence
from attestation.gpu.identity import DeviceIdentity, device_identity
from attestation.gpu.revocation import GpuCollateral, check_revocation
from attestation.gpu.rim import Rim, RimCache, verify_rim
from attestation.gpu.spdm import (
    NONCE_SIZE,
    OPAQUE_CHIP_SKU,
    OPAQUE_DRIVER_VERSION,
    OPAQUE_FEATURE_FLAG,
    OPAQUE_FWID,
    OPAQUE_NVDEC0_STATUS,
    OPAQUE_OPAQUE_DATA_VERSION,
    OPAQUE_PROJECT,
    OPAQUE_PROJECT_SKU,
    OPAQUE_PROTECTED_PCIE_STATUS,
    OPAQUE_VBIOS_VERSION,
    STATUS_DISABLED,
    STATUS_ENABLED,
    SpdmReport,
    parse_report,
)
from attestation.trust import TrustStore

_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


@dataclass(frozen=True)
class GpuVerifyOptions:
    """Explicit relaxations; the defaults are the strict choice."""

    require_revocation: bool = True  # no collateral -> GPU_COLLATERAL_MISSING
    require_rims: bool = True  # no driver/VBIOS RIM -> GPU_COLLATERAL_MISSING
    accept_expired_rim_certificates: bool = False  # a policy choice NVIDIA's sample policy makes; off here


class GpuVerifierCache:
    """Device chains (links + identity) and RIMs (signature + parse), shared across calls and threads."""

    def __init__(self, size: int = 256) -> None:
        self.chains = ChainCache(size)
        self.rims = RimCache(size)
        self._lock = threading.Lock()
        self._identities: dict[tuple[bytes, ...], DeviceIdentity] = {}
        self._golden: dict[tuple[bytes, bytes], Golden] = {}
        self._size = size

    def golden(self, driver: Rim, vbios: Rim, key: tuple[bytes, bytes]) -> Golden:
        """The merged, sorted golden values of a verified RIM pair (``key``: the two RIMs' bytes). Only a
        pair that merged is remembered; a conflicting pair raises at every call."""
        with self._lock:
            hit = self._golden.get(key)
        if hit is None:
            hit = prepare_golden(merge_golden(driver.measurements, vbios.measurements))
            with self._lock:
                if len(self._golden) >= self._size:
                    self._golden.pop(next(iter(self._golden)))
                self._golden[key] = hit
        return hit

    def identity(self, chain: Chain) -> DeviceIdentity:
        with self._lock:
            hit = self._identities.get(chain.ders)
        if hit is None:
            hit = device_identity(chain.certs)
            with self._lock:
                if len(self._identities) >= self._size:
                    self._identities.pop(next(iter(self._identities)))
                self._identities[chain.ders] = hit
        return hit


@dataclass(frozen=True)
class GpuClaims:
    """What one verified GPU report says. Only ever produced by a successful ``verify_gpu``."""

    architecture: str
    chip: str
    ueid: str
    fwid: bytes
    fwid_in_report: bool
    driver_version: str
    vbios_version: str
    nonce: bytes
    measurement_result: str  # "success" or "not-compared"
    measurements: dict[int, bytes]
    details: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "chip": self.chip,
            "ueid": self.ueid,
            "fwid": self.fwid.hex(),
            "fwid_in_report": self.fwid_in_report,
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "nonce": self.nonce.hex(),
            "measurement_result": self.measurement_result,
            "measurements": {str(k): v.hex() for k, v in sorted(self.measurements.items())},
            "details": self.details,
            "simulated": self.simulated,
        }


def format_vbios_version(raw: bytes) -> str:
    """NVIDIA's VBIOS version text (``96.00.9F.00.01``) from the 8-byte opaque record."""
    if len(raw) != 8:
        raise MalformedEvidence(
            f"VBIOS version record is {len(raw)} bytes, not 8", code=Code.GPU_REPORT_MALFORMED
        )
    return "%02X.%02X.%02X.%02X.%02X" % (raw[3], raw[2], raw[1], raw[0], raw[4])  # noqa: UP031 (hot path)


def _status(value: bytes | None) -> str:
    if value is None:
        return "absent"
    if value == bytes([STATUS_ENABLED]):
        return "enabled"
    if value == bytes([STATUS_DISABLED]):
        return "disabled"
    return f"unknown:{value.hex()}"


def _verify_signature(report: SpdmReport, chain: Chain) -> None:
    r, s = int.from_bytes(report.signature[:48], "big"), int.from_bytes(report.signature[48:], "big")
    try:
        chain.leaf_key().verify(encode_dss_signature(r, s), report.signed, _ECDSA_SHA384)
    except InvalidSignature as exc:
        raise SignatureInvalid(
            "the GPU report's ECDSA P-384 signature does not verify with its leaf certificate",
            code=Code.GPU_SIGNATURE_INVALID,
        ) from exc


def _check_fwid(report: SpdmReport, identity: DeviceIdentity) -> bool:
    fwid = report.opaque.get(OPAQUE_FWID)
    if fwid is None:
        return False
    if not hmac.compare_digest(fwid, identity.fwid):
        raise EndorsementMismatch(
            f"the report's FWID {fwid.hex()[:16]}... differs from the leaf certificate's {identity.fwid.hex()[:16]}...",
            code=Code.GPU_FWID_MISMATCH,
            hint="the leaf certificate was not made by the firmware that signed this report",
        )
    return True


def _check_nonce(report: SpdmReport, nonce: bytes) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise MalformedEvidence(
            f"the expected GPU nonce must be {NONCE_SIZE} bytes", code=Code.GPU_NONCE_MISMATCH
        )
    if not hmac.compare_digest(report.request.nonce, nonce):
        raise EndorsementMismatch(
            f"the GPU report answers nonce {report.request.nonce.hex()[:16]}..., not {nonce.hex()[:16]}...",
            code=Code.GPU_NONCE_MISMATCH,
        )


def _rim(
    data: bytes | None,
    role: str,
    *,
    trust: TrustStore,
    now: datetime,
    options: GpuVerifyOptions,
    collateral: GpuCollateral | None,
    cache: GpuVerifierCache | None,
) -> Rim | None:
    if data is None:
        if options.require_rims:
            raise CollateralError(f"no {role} RIM was supplied", code=Code.GPU_COLLATERAL_MISSING)
        return None
    rim = verify_rim(
        data,
        trust=trust,
        now=now,
        cache=cache.rims if cache else None,
        accept_expired_certificates=options.accept_expired_rim_certificates,
    )
    if collateral is not None:
        check_revocation(rim.chain.certs, rim.chain.ders, collateral, now=now, what=f"{role} RIM signer")
    return rim


def _rim_details(rim: Rim | None, reported: str) -> dict[str, Any] | None:
    if rim is None:
        return None
    return {
        "version": rim.version,
        "matches_report_version": rim.version == reported,
        "tag_id": rim.tag_id,
        "signer": rim.signer,
        "valid_until": rim.valid_until.isoformat(),
        "certificate_expired_accepted": rim.cert_expired,
    }


def verify_gpu(
    evidence: GpuEvidence,
    *,
    nonce: bytes,
    trust: TrustStore,
    now: datetime,
    collateral: GpuCollateral | None,
    driver_rim: bytes | None,
    vbios_rim: bytes | None,
    options: GpuVerifyOptions = GpuVerifyOptions(),
    cache: GpuVerifierCache | None = None,
) -> GpuClaims:
    """Verify one GPU's evidence; raise ``AttestationError`` (a GPU_* code) or return its claims."""
    try:
        return _verify(
            evidence,
            nonce=nonce,
            trust=trust,
            now=now,
            collateral=collateral,
            driver_rim=driver_rim,
            vbios_rim=vbios_rim,
            options=options,
            cache=cache,
        )
    except AttestationError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as exc:
        # Defence in depth: any shape the parsers did not foresee is still a coded refusal.
        raise MalformedEvidence(
            f"GPU evidence could not be read: {type(exc).__name__}", code=Code.GPU_REPORT_MALFORMED
        ) from exc


def _verify(
    evidence: GpuEvidence,
    *,
    nonce: bytes,
    trust: TrustStore,
    now: datetime,
    collateral: GpuCollateral | None,
    driver_rim: bytes | None,
    vbios_rim: bytes | None,
    options: GpuVerifyOptions,
    cache: GpuVerifierCache | None,
) -> GpuClaims:
    report = parse_report(evidence.report)
    chain = verify_chain(
        evidence.chain,
        check_root=trust.check_nvidia_device_root,
        now=now,
        code=Code.GPU_CHAIN_UNTRUSTED,
        expired_code=Code.GPU_CERT_EXPIRED,
        what="GPU device",
        cache=cache.chains if cache else None,
    )
    _verify_signature(report, chain)
    identity = cache.identity(chain) if cache else device_identity(chain.certs)
    fwid_in_report = _check_fwid(report, identity)
    _check_nonce(report, nonce)

    revocation: dict[str, Any] = {"status": "not-checked"}
    if collateral is None:
        if options.require_revocation:
            raise CollateralError(
                "no OCSP responses or CRLs were supplied for the GPU chain", code=Code.GPU_COLLATERAL_MISSING
            )
    else:
        # The leaf is made by the GPU at boot and has no OCSP entry; its issuer and the CAs above it do.
        result = check_revocation(chain.certs, chain.ders, collateral, now=now, what="GPU device", first=1)
        revocation = {
            "status": "good",
            "valid_until": result.valid_until.isoformat() if result.valid_until else None,
        }

    driver_version = report.opaque_text(OPAQUE_DRIVER_VERSION) or ""
    vbios_raw = report.opaque.get(OPAQUE_VBIOS_VERSION)
    vbios_version = format_vbios_version(vbios_raw) if vbios_raw is not None else ""
    driver = _rim(
        driver_rim, "driver", trust=trust, now=now, options=options, collateral=collateral, cache=cache
    )
    vbios = _rim(
        vbios_rim, "VBIOS", trust=trust, now=now, options=options, collateral=collateral, cache=cache
    )
    result_text = "not-compared"
    compared: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()
    if driver is not None and vbios is not None:
        if cache is not None and driver_rim is not None and vbios_rim is not None:
            golden = cache.golden(driver, vbios, (driver_rim, vbios_rim))
        else:
            golden = prepare_golden(merge_golden(driver.measurements, vbios.measurements))
        comparison = compare(report, golden)
        result_text, compared, skipped = "success", comparison.compared, comparison.skipped

    feature = report.opaque.get(OPAQUE_FEATURE_FLAG)
    version = report.opaque.get(OPAQUE_OPAQUE_DATA_VERSION)
    details: dict[str, Any] = {
        "declared_architecture": evidence.declared_architecture,
        "project": report.opaque_text(OPAQUE_PROJECT),
        "project_sku": report.opaque_text(OPAQUE_PROJECT_SKU),
        "chip_sku": report.opaque_text(OPAQUE_CHIP_SKU),
        "protected_pcie": _status(report.opaque.get(OPAQUE_PROTECTED_PCIE_STATUS)),
        "nvdec0": _status(report.opaque.get(OPAQUE_NVDEC0_STATUS)),
        "feature_flag": feature.hex() if feature is not None else None,
        "opaque_data_version": version.hex() if version is not None else None,
        "debug": "not-reported",
        "chain_valid_until": chain.not_after.isoformat(),
        "revocation": revocation,
        "driver_rim": _rim_details(driver, driver_version),
        "vbios_rim": _rim_details(vbios, vbios_version),
        "measurements_compared": len(compared),
        "measurements_skipped": list(skipped),
        "trailing_bytes": report.trailing_bytes,
    }
    return GpuClaims(
        architecture=identity.architecture,
        chip=identity.chip,
        ueid=identity.ueid,
        fwid=identity.fwid,
        fwid_in_report=fwid_in_report,
        driver_version=driver_version,
        vbios_version=vbios_version,
        nonce=report.request.nonce,
        measurement_result=result_text,
        measurements=dict(report.measurements),
        details=details,
        simulated=trust.allow_simulated,
    )


RimLookup = Callable[[str, str], tuple[bytes | None, bytes | None]]


def verify_gpus(
    evidence: Sequence[GpuEvidence],
    *,
    nonce: bytes,
    trust: TrustStore,
    now: datetime,
    collateral: GpuCollateral | None,
    rims: RimLookup,
    options: GpuVerifyOptions = GpuVerifyOptions(),
    cache: GpuVerifierCache | None = None,
) -> list[GpuClaims]:
    """Every GPU of a node, each with the RIMs ``rims(driver_version, vbios_version)`` returns.

    The same device may appear only once: a relayed copy of one GPU's evidence must not count twice.
    """
    out: list[GpuClaims] = []
    seen: set[str] = set()
    for item in evidence:
        report = parse_report(item.report)
        raw = report.opaque.get(OPAQUE_VBIOS_VERSION)
        driver_rim, vbios_rim = rims(
            report.opaque_text(OPAQUE_DRIVER_VERSION) or "",
            format_vbios_version(raw) if raw is not None else "",
        )
        claims = verify_gpu(
            item,
            nonce=nonce,
            trust=trust,
            now=now,
            collateral=collateral,
            driver_rim=driver_rim,
            vbios_rim=vbios_rim,
            options=options,
            cache=cache,
        )
        if claims.ueid in seen:
            raise EndorsementMismatch(
                f"GPU {claims.ueid} appears twice in the node's evidence", code=Code.GPU_DUPLICATE_DEVICE
            )
        seen.add(claims.ueid)
        out.append(claims)
    return out
