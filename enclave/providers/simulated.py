"""Simulated evidence for tests, demos and development off confidential hardware.

The provider only calls a minter: ``mint(report_data) -> Evidence``. The simulator in
``attestation.simulate`` signs with generated test roots, so the server accepts such evidence only
under a simulation trust profile; the production profile refuses it. The node applies the same
output checks as for real hardware.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attestation.claims import Tee
from enclave.errors import NodeCode, NodeError
from enclave.providers.base import Evidence, check_evidence, check_report_data
from enclave.providers.certtable import GUID_BY_KIND, CertKind, build_cert_table, endorsements

if TYPE_CHECKING:  # the simulator is only loaded by whoever builds a PKI
    from attestation.simulate import SimulatedPki

Minter = Callable[[bytes], Evidence]


class SimulatedProvider:
    name: str
    tee: Tee

    def __init__(self, minter: Minter, *, tee: Tee, name: str | None = None) -> None:
        self._mint = minter
        self.tee = tee
        self.name = name if name is not None else f"simulated-{tee.value}"

    def __repr__(self) -> str:
        return f"SimulatedProvider(name={self.name!r}, tee={self.tee.value!r})"

    def get_evidence(self, report_data: bytes) -> Evidence:
        data = check_report_data(report_data)
        evidence = self._mint(data)
        if not isinstance(evidence, Evidence):
            raise NodeError(
                f"the simulator returned {type(evidence).__name__}, not Evidence",
                code=NodeCode.PROVIDER_BAD_OUTPUT,
            )
        checked = check_evidence(evidence, tee=self.tee, report_data=data)
        return dataclasses.replace(checked, provider=self.name)


def snp_minter(pki: SimulatedPki, **knobs: Any) -> Minter:
    """Mint SNP reports with ``pki.mint_snp_report(report_data=..., **knobs)``. The endorsements
    travel through a certificate table, as from a real extended report."""
    leaf_kind = CertKind.VLEK if knobs.get("signing_key") == "vlek" else CertKind.VCEK

    def mint(report_data: bytes) -> Evidence:
        minted = pki.mint_snp_report(report_data=report_data, **knobs)
        ask, ark = minted.chain_der
        table = build_cert_table(
            [
                (GUID_BY_KIND[leaf_kind], minted.leaf_der),
                (GUID_BY_KIND[CertKind.ASK], ask),
                (GUID_BY_KIND[CertKind.ARK], ark),
            ]
        )
        return Evidence(Tee.SNP, minted.report, endorsements(table))

    return mint


def tdx_minter(pki: SimulatedPki, **knobs: Any) -> Minter:
    """Mint TDX quotes with ``pki.mint_tdx_quote(report_data=..., **knobs)`` (the PCK chain is
    inside the quote, as on real hardware)."""

    def mint(report_data: bytes) -> Evidence:
        return Evidence(Tee.TDX, pki.mint_tdx_quote(report_data=report_data, **knobs).quote)

    return mint


def simulated_snp(pki: SimulatedPki, **knobs: Any) -> SimulatedProvider:
    return SimulatedProvider(snp_minter(pki, **knobs), tee=Tee.SNP, name="simulated-snp")


def simulated_tdx(pki: SimulatedPki, **knobs: Any) -> SimulatedProvider:
    return SimulatedProvider(tdx_minter(pki, **knobs), tee=Tee.TDX, name="simulated-tdx")
