"""Where a node gets its GPUs' evidence: the seam ``GpuEvidenceSource``, "no GPU", and simulated GPUs.

``collect(nonce)`` returns one ``GpuEvidence`` per GPU, each answering ``nonce`` (the 32-byte GPU nonce the
node derives from its registration transcript, ``proto.contract.gpu_nonce``), or raises ``NodeError``. An
empty list is the clear state "this node has no GPU": the node registers exactly as a node did before GPUs
existed, and only a policy requiring GPUs refuses it. The NVML source (real Hopper/Blackwell) implements the
same protocol.

``SimulatedGpus`` mints evidence in NVIDIA's formats under a ``GpuSimulator``'s test PKI (development and
tests only; the production trust profile refuses its roots). Its fault knobs change what the GPUs report.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from enclave.errors import NodeCode, NodeError

if (
    TYPE_CHECKING
):  # attestation.gpu loads signxml/lxml: only the sources that make evidence need it at run time
    from attestation.gpu.evidence import GpuEvidence
    from attestation.simulate.gpu import GpuSimulator

GPU_NONCE_SIZE = 32
MAX_SIMULATED_GPUS = 8
VBIOS_MISMATCH = "vbios-mismatch"
# what a node can make its simulated GPUs report wrongly; collateral faults are the control plane's side
REPORT_FAULTS = (
    VBIOS_MISMATCH,
    "malformed",
    "bad-signature",
    "foreign-chain",
    "expired-cert",
    "fwid-mismatch",
    "nonce-mismatch",
)
_VBIOS_INDEX = 1  # a VBIOS RIM index: the report's measurement there differs from the RIM's golden value


@runtime_checkable
class GpuEvidenceSource(Protocol):
    """The node's GPUs. ``collect`` raises ``NodeError``, never returns junk; [] means no GPU."""

    def collect(self, nonce: bytes) -> list[GpuEvidence]: ...


def check_gpu_nonce(nonce: bytes) -> bytes:
    if not isinstance(nonce, bytes) or len(nonce) != GPU_NONCE_SIZE:
        raise NodeError(f"the GPU nonce must be {GPU_NONCE_SIZE} bytes", code=NodeCode.REPORT_DATA_INVALID)
    return nonce


class NoGpu:
    """A node without GPUs (or one that does not attest them)."""

    def __repr__(self) -> str:
        return "NoGpu()"

    def collect(self, nonce: bytes) -> list[GpuEvidence]:
        check_gpu_nonce(nonce)
        return []


class SimulatedGpus:
    """``count`` simulated GPUs of one node; ``seed`` keeps their device identities (UEIDs) stable across
    registrations. ``fault`` (one of ``REPORT_FAULTS``) applies to every GPU."""

    def __init__(
        self,
        simulator: GpuSimulator,
        count: int,
        *,
        seed: str = "sim-gpu",
        architecture: str = "HOPPER",
        fault: str | None = None,
    ) -> None:
        if not 1 <= count <= MAX_SIMULATED_GPUS:
            raise NodeError(
                f"simulated GPUs: 1 to {MAX_SIMULATED_GPUS}, not {count}", code=NodeCode.CONFIG_INVALID
            )
        if fault is not None and fault not in REPORT_FAULTS:
            raise NodeError(
                f"unknown simulated GPU fault {fault!r}; choose one of {', '.join(REPORT_FAULTS)}",
                code=NodeCode.CONFIG_INVALID,
            )
        self._sim = simulator
        self.count = count
        self.seed = seed
        self.architecture = architecture
        self.fault = fault

    def __repr__(self) -> str:
        return f"SimulatedGpus(count={self.count}, architecture={self.architecture!r}, fault={self.fault!r})"

    def collect(self, nonce: bytes) -> list[GpuEvidence]:
        from attestation.simulate.gpu import GpuFault  # development only: loaded on demand

        check_gpu_nonce(nonce)
        faults = {GpuFault(self.fault)} if self.fault not in (None, VBIOS_MISMATCH) else set()
        overrides = (
            {_VBIOS_INDEX: hashlib.sha384(b"a VBIOS build no RIM describes").digest()}
            if self.fault == VBIOS_MISMATCH
            else None
        )
        return [
            self._sim.mint(
                nonce=nonce,
                seed=f"{self.seed}-{i}",
                architecture=self.architecture,
                faults=faults,
                measurements=overrides,
            ).evidence
            for i in range(self.count)
        ]
