"""AMD SEV-SNP evidence: report parsing, AMD certificates and collateral, and offline verification.

Pure: no I/O, no clock. ``verify_report`` takes the report bytes, a ``TrustStore`` (pinned ARKs), an
``SnpCollateral`` (parsed AMD certificates and CRLs, built once and reused) and ``now``.
"""

from attestation.snp.certs import (
    AmdCertificate,
    AmdExtensions,
    Role,
    load_pem_certificates,
    parse_certificate,
)
from attestation.snp.collateral import AmdCrl, SnpCollateral, parse_crl
from attestation.snp.report import (
    PRODUCTS,
    REPORT_SIZE,
    SIGNED_SIZE,
    SnpReport,
    decode_tcb,
    parse_report,
    product_from_cpuid,
)
from attestation.snp.verify import verify_report, verify_report_signature

__all__ = [
    "PRODUCTS",
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "AmdCertificate",
    "AmdCrl",
    "AmdExtensions",
    "Role",
    "SnpCollateral",
    "SnpReport",
    "decode_tcb",
    "load_pem_certificates",
    "parse_certificate",
    "parse_crl",
    "parse_report",
    "product_from_cpuid",
    "verify_report",
    "verify_report_signature",
]
