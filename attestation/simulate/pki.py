"""``SimulatedPki``: one generated AMD + Intel test PKI, minting evidence and collateral in real formats.

Everything is made on first use (an RSA-4096 key takes up to a second), so a test that only needs TDX
never pays for AMD keys. Share one instance per test session: ``shared_pki(now)``.
"""

from __future__ import annotations

import functools
from datetime import datetime

from attestation.simulate.snp_mint import SnpMinting
from attestation.simulate.tdx_mint import TdxMinting
from attestation.trust import TrustStore, simulation


class SimulatedPki(SnpMinting, TdxMinting):
    """Test roots for both TEEs. ``now`` anchors every validity window (certificates, CRLs, collateral).

    SEV-SNP: ``mint_snp_report``, ``snp_collateral_items``, ``amd_crl``, ``amd_ca``.
    TDX: ``mint_tdx_quote``, ``tdx_tcb_info``, ``tdx_qe_identity``, ``pck_crl``, ``root_crl``,
    ``tdx_collateral_items``, ``intel_ca``.
    """

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware (UTC)")
        SnpMinting.__init__(self, now)
        TdxMinting.__init__(self, now)
        self._trust: TrustStore | None = None

    @classmethod
    def generate(cls, now: datetime) -> SimulatedPki:
        return cls(now)

    def __repr__(self) -> str:
        return f"SimulatedPki(now={self.now.isoformat()})"

    def trust_store(self) -> TrustStore:
        """The simulation profile pinning exactly this PKI's three ARKs and its Intel root."""
        if self._trust is None:
            self._trust = simulation(amd_arks=self.amd_arks(), intel_root=self.intel_ca().root_der)
        return self._trust


@functools.lru_cache(maxsize=4)
def shared_pki(now: datetime) -> SimulatedPki:
    """One PKI per ``now``, shared by every test (and tool) in the process asking for the same time."""
    return SimulatedPki.generate(now)
