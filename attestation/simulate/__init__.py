"""TEE simulator: SEV-SNP reports and TDX quotes in the real formats, signed by generated test roots.

The certificates carry the same vendor extensions as AMD's and Intel's, so verifiers run the very same
code path as for real evidence; only the trust store differs (``SimulatedPki.trust_store()``), and the
production profile refuses these roots (their subject names ``attestation.trust.SIMULATOR_ORGANIZATION``).
Pure: no I/O, no clock (time is passed in).
"""

from attestation.simulate.faults import Fault
from attestation.simulate.intel_collateral import ModuleIdentity, QeIdentityLevel, TdxTcbLevel
from attestation.simulate.pki import SimulatedPki, shared_pki
from attestation.simulate.snp_mint import MintedSnp
from attestation.simulate.tdx_mint import MintedTdx, TdxPlatform

__all__ = [
    "Fault",
    "MintedSnp",
    "MintedTdx",
    "ModuleIdentity",
    "QeIdentityLevel",
    "SimulatedPki",
    "TdxPlatform",
    "TdxTcbLevel",
    "shared_pki",
]
