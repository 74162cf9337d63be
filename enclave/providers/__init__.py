"""Evidence providers: where a node gets its SEV-SNP report or TDX quote.

``detect_provider()`` picks one; every provider has ``name``, ``tee`` and
``get_evidence(report_data) -> Evidence`` and raises ``enclave.errors.NodeError`` on failure.
"""

from enclave.choices import PROVIDER_NAMES
from enclave.providers.base import Evidence, EvidenceProvider, check_evidence, check_report_data
from enclave.providers.configfs import ConfigfsTsmProvider, TsmFs
from enclave.providers.detect import detect_provider
from enclave.providers.sevguest import SevGuestProvider
from enclave.providers.simulated import (
    Minter,
    SimulatedProvider,
    simulated_snp,
    simulated_tdx,
    snp_minter,
    tdx_minter,
)
from enclave.providers.tdxguest import TdxGuestProvider

__all__ = [
    "PROVIDER_NAMES",
    "ConfigfsTsmProvider",
    "Evidence",
    "EvidenceProvider",
    "Minter",
    "SevGuestProvider",
    "SimulatedProvider",
    "TdxGuestProvider",
    "TsmFs",
    "check_evidence",
    "check_report_data",
    "detect_provider",
    "simulated_snp",
    "simulated_tdx",
    "snp_minter",
    "tdx_minter",
]
