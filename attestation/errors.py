"""The attestation error tree.

Every failure carries a stable ``code`` (the same string appears in deny reasons, audit entries and
gRPC ``ErrorInfo.reason``), a human message saying what failed, and a ``hint`` saying what to do.
Messages never contain secrets; evidence is public, so quoting field values is fine.
"""

from __future__ import annotations

from enum import StrEnum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import DuplicateExtension, InvalidVersion, UnsupportedGeneralNameType

from attestation.coded import CodedError

# What cryptography raises for certificate or CRL bytes it cannot read: ValueError for most, its own
# InvalidVersion for a bad version number, UnsupportedAlgorithm for fields it parses on first access,
# TypeError for a name attribute whose value type does not fit its OID (also on first access), and
# DuplicateExtension / UnsupportedGeneralNameType (plain Exceptions) when the extensions are first read.
X509_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    UnsupportedAlgorithm,
    InvalidVersion,
    TypeError,
    DuplicateExtension,
    UnsupportedGeneralNameType,
)


class Code(StrEnum):
    """Stable error codes. Never renumber or rename: they are part of the wire and audit contract."""

    # Input shape, any TEE
    EVIDENCE_MALFORMED = "EVIDENCE_MALFORMED"
    EVIDENCE_UNKNOWN_FORMAT = "EVIDENCE_UNKNOWN_FORMAT"
    # SEV-SNP
    SNP_REPORT_MALFORMED = "SNP_REPORT_MALFORMED"
    SNP_UNSUPPORTED_VERSION = "SNP_UNSUPPORTED_VERSION"
    SNP_UNSUPPORTED_SIGNATURE_ALGO = "SNP_UNSUPPORTED_SIGNATURE_ALGO"
    SNP_SIGNATURE_INVALID = "SNP_SIGNATURE_INVALID"
    SNP_ENDORSEMENT_NOT_FOUND = "SNP_ENDORSEMENT_NOT_FOUND"
    SNP_CHAIN_INVALID = "SNP_CHAIN_INVALID"
    SNP_CERT_EXPIRED = "SNP_CERT_EXPIRED"
    SNP_CERT_REVOKED = "SNP_CERT_REVOKED"
    SNP_TCB_MISMATCH = "SNP_TCB_MISMATCH"
    SNP_CHIP_ID_MISMATCH = "SNP_CHIP_ID_MISMATCH"
    SNP_PRODUCT_MISMATCH = "SNP_PRODUCT_MISMATCH"
    SNP_SIGNING_KEY_MISMATCH = "SNP_SIGNING_KEY_MISMATCH"
    SNP_CRL_MISSING = "SNP_CRL_MISSING"
    SNP_CRL_EXPIRED = "SNP_CRL_EXPIRED"
    # Intel TDX
    TDX_QUOTE_MALFORMED = "TDX_QUOTE_MALFORMED"
    TDX_UNSUPPORTED_VERSION = "TDX_UNSUPPORTED_VERSION"
    TDX_SIGNATURE_INVALID = "TDX_SIGNATURE_INVALID"
    TDX_QE_REPORT_SIGNATURE_INVALID = "TDX_QE_REPORT_SIGNATURE_INVALID"
    TDX_QE_BINDING_INVALID = "TDX_QE_BINDING_INVALID"
    TDX_PCK_CHAIN_INVALID = "TDX_PCK_CHAIN_INVALID"
    TDX_CERT_EXPIRED = "TDX_CERT_EXPIRED"
    TDX_CERT_REVOKED = "TDX_CERT_REVOKED"
    TDX_COLLATERAL_MISSING = "TDX_COLLATERAL_MISSING"
    TDX_COLLATERAL_INVALID = "TDX_COLLATERAL_INVALID"
    TDX_COLLATERAL_SIGNATURE_INVALID = "TDX_COLLATERAL_SIGNATURE_INVALID"
    TDX_COLLATERAL_EXPIRED = "TDX_COLLATERAL_EXPIRED"
    TDX_COLLATERAL_MISMATCH = "TDX_COLLATERAL_MISMATCH"
    TDX_QE_IDENTITY_MISMATCH = "TDX_QE_IDENTITY_MISMATCH"
    TDX_TCB_NOT_MATCHED = "TDX_TCB_NOT_MATCHED"
    TDX_TCB_REVOKED = "TDX_TCB_REVOKED"
    TDX_MODULE_MISMATCH = "TDX_MODULE_MISMATCH"
    # Trust anchors and collateral store
    UNTRUSTED_ROOT = "UNTRUSTED_ROOT"
    TEST_ROOT_IN_PRODUCTION = "TEST_ROOT_IN_PRODUCTION"
    COLLATERAL_MALFORMED = "COLLATERAL_MALFORMED"
    COLLATERAL_REJECTED = "COLLATERAL_REJECTED"
    COLLATERAL_STORE_ERROR = "COLLATERAL_STORE_ERROR"
    COLLATERAL_ROLLBACK = "COLLATERAL_ROLLBACK"
    COLLATERAL_BUNDLE_INVALID = "COLLATERAL_BUNDLE_INVALID"
    COLLATERAL_FETCH_FAILED = "COLLATERAL_FETCH_FAILED"
    COLLATERAL_NOT_FOUND = "COLLATERAL_NOT_FOUND"
    # NVIDIA GPU (SPDM measurements, device chain, RIMs, offline revocation collateral)
    GPU_REPORT_MALFORMED = "GPU_REPORT_MALFORMED"
    GPU_SIGNATURE_INVALID = "GPU_SIGNATURE_INVALID"
    GPU_CHAIN_UNTRUSTED = "GPU_CHAIN_UNTRUSTED"
    GPU_CERT_EXPIRED = "GPU_CERT_EXPIRED"
    GPU_FWID_MISMATCH = "GPU_FWID_MISMATCH"
    GPU_NONCE_MISMATCH = "GPU_NONCE_MISMATCH"
    GPU_REVOKED = "GPU_REVOKED"
    GPU_COLLATERAL_MISSING = "GPU_COLLATERAL_MISSING"
    GPU_COLLATERAL_EXPIRED = "GPU_COLLATERAL_EXPIRED"
    GPU_RIM_INVALID = "GPU_RIM_INVALID"
    GPU_RIM_UNTRUSTED = "GPU_RIM_UNTRUSTED"
    GPU_RIM_EXPIRED = "GPU_RIM_EXPIRED"
    GPU_RIM_INDEX_CONFLICT = "GPU_RIM_INDEX_CONFLICT"
    GPU_MEASUREMENT_MISMATCH = "GPU_MEASUREMENT_MISMATCH"
    GPU_DUPLICATE_DEVICE = "GPU_DUPLICATE_DEVICE"
    # Report-data binding
    BINDING_MISMATCH = "BINDING_MISMATCH"
    BINDING_INPUT_INVALID = "BINDING_INPUT_INVALID"


_DEFAULT_HINTS: dict[Code, str] = {
    Code.EVIDENCE_MALFORMED: "the evidence is not a well-formed SNP report or TDX quote; capture it again",
    Code.EVIDENCE_UNKNOWN_FORMAT: "pass a raw SEV-SNP ATTESTATION_REPORT or a TDX quote (v4/v5)",
    Code.SNP_ENDORSEMENT_NOT_FOUND: (
        "import the VCEK/VLEK for this chip and REPORTED_TCB: sovereign collateral import FILE"
    ),
    Code.SNP_CERT_EXPIRED: "import current AMD certificates, or check the clock passed as --at",
    Code.TDX_COLLATERAL_MISSING: (
        "import Intel TCB info, QE identity and CRLs for this FMSPC: sovereign collateral import FILE"
    ),
    Code.TDX_COLLATERAL_EXPIRED: "import fresh Intel collateral (TCB info, QE identity, CRLs)",
    Code.TDX_CERT_EXPIRED: "a certificate in the chain is outside its validity at the given time",
    Code.TDX_TCB_NOT_MATCHED: "the platform is below every TCB level Intel lists; update firmware",
    Code.UNTRUSTED_ROOT: "the chain does not end at a pinned AMD/Intel root; check the trust profile",
    Code.TEST_ROOT_IN_PRODUCTION: "simulated evidence is refused by the production trust profile",
    Code.GPU_REPORT_MALFORMED: "pass the SPDM GET_MEASUREMENTS request || MEASUREMENTS response from NVML as captured",
    Code.GPU_SIGNATURE_INVALID: "the GPU report is not signed by its leaf certificate; capture the evidence again",
    Code.GPU_CHAIN_UNTRUSTED: "the GPU chain must end at the pinned NVIDIA Device Identity CA; check the trust profile",
    Code.GPU_NONCE_MISMATCH: "the GPU report answers another nonce: request a fresh report for this challenge",
    Code.GPU_COLLATERAL_MISSING: "import OCSP responses or CRLs for the GPU and RIM chains: sovereign collateral import",
    Code.GPU_COLLATERAL_EXPIRED: "import fresh NVIDIA OCSP responses or CRLs (outside their validity window)",
    Code.GPU_RIM_INVALID: "the RIM's XML signature or structure is invalid; fetch the RIM from NVIDIA again",
    Code.GPU_RIM_EXPIRED: "a RIM signing certificate is outside its validity; fetch a current RIM",
    Code.GPU_MEASUREMENT_MISMATCH: "the GPU runs firmware or a driver that its RIMs do not list; update or re-flash",
    Code.GPU_CERT_EXPIRED: "a GPU device certificate is outside its validity at the given time; check the clock",
    Code.GPU_FWID_MISMATCH: "the leaf certificate does not certify the firmware that signed the report",
    Code.GPU_REVOKED: "NVIDIA revoked a certificate in the GPU or RIM chain; this GPU or RIM is not trusted",
    Code.GPU_RIM_UNTRUSTED: "the RIM chain must end at the pinned NVIDIA RIM root; fetch the RIM from NVIDIA",
    Code.GPU_RIM_INDEX_CONFLICT: "the driver and VBIOS RIMs do not belong together; fetch the pair for this GPU",
    Code.GPU_DUPLICATE_DEVICE: "each GPU may appear once in a node's evidence; collect the evidence again",
}


class AttestationError(CodedError):
    """Base of every attestation failure. Carries a stable code and a hint."""

    default_code: Code = Code.EVIDENCE_MALFORMED

    code: Code

    def __init__(self, message: str, *, code: Code | None = None, hint: str | None = None) -> None:
        code = code if code is not None else self.default_code
        super().__init__(code, message, hint if hint is not None else _DEFAULT_HINTS.get(code, ""))


class MalformedEvidence(AttestationError):
    """Bytes that do not parse as the claimed format (truncated, wrong version, bad lengths)."""

    default_code = Code.EVIDENCE_MALFORMED


class SignatureInvalid(AttestationError):
    """A signature over evidence or a certificate did not verify."""


class ChainInvalid(AttestationError):
    """A certificate chain is broken, expired, revoked, or does not end at a pinned root."""


class EndorsementMismatch(AttestationError):
    """A certificate's claims (TCB, chip id, product, FMSPC) disagree with the evidence."""


class CollateralError(AttestationError):
    """Collateral is missing, malformed, badly signed, expired or does not fit the evidence."""

    default_code = Code.COLLATERAL_MALFORMED


class TcbError(AttestationError):
    """The platform's TCB matches no acceptable level."""


class BindingError(AttestationError):
    """The evidence's report data does not bind the expected nonce and keys."""

    default_code = Code.BINDING_MISMATCH
