"""NVIDIA GPU evidence (Hopper, Blackwell in confidential-computing mode): offline verification.

Pure: no I/O, no clock. ``verify_gpu`` takes one GPU's SPDM report and device chain, the expected nonce, a
``TrustStore`` (pinned NVIDIA Device Identity and RIM roots), offline revocation collateral, the driver and
VBIOS RIMs and ``now``, and returns ``GpuClaims`` or raises an ``AttestationError`` with a GPU_* code.
"""

from attestation.gpu.chain import Chain, ChainCache
from attestation.gpu.compare import Comparison, merge_golden
from attestation.gpu.evidence import GpuEvidence, from_pem, parse_evidence_json
from attestation.gpu.identity import DeviceIdentity, device_identity
from attestation.gpu.revocation import GpuCollateral, check_revocation
from attestation.gpu.rim import GoldenMeasurement, Rim, RimCache, verify_rim
from attestation.gpu.spdm import SpdmReport, decode_hex_report, parse_report
from attestation.gpu.verify import (
    GpuClaims,
    GpuVerifierCache,
    GpuVerifyOptions,
    format_vbios_version,
    verify_gpu,
    verify_gpus,
)

__all__ = [
    "Chain",
    "ChainCache",
    "Comparison",
    "DeviceIdentity",
    "GoldenMeasurement",
    "GpuClaims",
    "GpuCollateral",
    "GpuEvidence",
    "GpuVerifierCache",
    "GpuVerifyOptions",
    "Rim",
    "RimCache",
    "SpdmReport",
    "check_revocation",
    "decode_hex_report",
    "device_identity",
    "format_vbios_version",
    "from_pem",
    "merge_golden",
    "parse_evidence_json",
    "parse_report",
    "verify_gpu",
    "verify_gpus",
    "verify_rim",
]
