"""The node's GPUs at registration: verify each GPU's evidence against the transcript-derived nonce, with
offline collateral, into the claim entries stored beside the CPU claims (``details["gpus"]``).

Collateral comes from the collateral store the server already loads (``--collateral``): its GPU items
(RIMs, OCSP responses, NVIDIA CRLs) as ``GpuStoreCollateral``, picked per GPU by ``inputs_for``. The store
is re-read when an import changes it (``EvidenceVerifier.collateral``), so new RIMs or revocation answers
apply to the next registration. Fail closed: no GPU items, no RIM for a reported version, no revocation
answer -> ``GPU_COLLATERAL_MISSING`` (the verifier's code), never a GPU accepted on less. No network; the
clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from attestation.claims import Claims
from attestation.errors import AttestationError, Code, CollateralError, EndorsementMismatch, MalformedEvidence
from attestation.gpu import GpuClaims, GpuEvidence, GpuVerifierCache, GpuVerifyOptions, verify_gpu
from attestation.gpu_collateral import GpuStoreCollateral
from attestation.trust import TrustStore
from proto.contract import GpuEvidenceItem

GpuCollateralSource = Callable[[], GpuStoreCollateral]
"""The store's GPU items as of now (``lambda: evidence_verifier.collateral().gpu``)."""


def gpu_claim_entry(claims: GpuClaims) -> dict[str, Any]:
    """One GPU's entry in ``details["gpus"]`` (the fields ``policies.gpu_rules.GPU_CLAIM_FIELDS`` reads)."""
    details = claims.details
    rims = (details.get("driver_rim"), details.get("vbios_rim"))
    return {
        "architecture": claims.architecture,
        "chip": claims.chip,
        "ueid": claims.ueid,
        "fwid": claims.fwid.hex(),
        "driver_version": claims.driver_version,
        "vbios_version": claims.vbios_version,
        "measurement_result": claims.measurement_result,
        "rim_versions_match": all(r is not None and r.get("matches_report_version") is True for r in rims),
        # The report exists only as a CC attestation report signed by the GPU's firmware; dev-tools mode is
        # not in these reports' opaque data ("not-reported"), so it can only show here once a report says so.
        "cc_mode": "devtools" if details.get("debug") == "enabled" else "on",
        "revocation": str(details.get("revocation", {}).get("status", "not-checked")),
        "simulated": claims.simulated,
    }


SUMMARY_TEXT = ("architecture", "driver_version", "vbios_version", "ueid", "measurement_result", "cc_mode")


def gpu_summaries(claims: Claims) -> list[dict[str, Any]]:
    """What a reply and an audit entry show of each verified GPU (``GpuSummary`` in attestation.proto),
    read from ``details["gpus"]``; a node without GPUs has none. Stored claims are read as they are: an
    entry that is not a table is left out, a missing text is ""."""
    entries = claims.details.get("gpus", [])
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            summary: dict[str, Any] = {k: str(entry.get(k) or "") for k in SUMMARY_TEXT}
            summary["revocation"] = str(entry.get("revocation") or "")
            summary["simulated"] = entry.get("simulated") is True
            out.append(summary)
    return out


def gpu_audit_fields(claims: Claims) -> dict[str, Any]:
    """A registration entry's GPU fields (one list per claim, in the order sent); none without GPUs."""
    gpus = gpu_summaries(claims)
    if not gpus:
        return {}
    return {
        "gpu_count": len(gpus),
        "gpu_architectures": tuple(g["architecture"] for g in gpus),
        "gpu_driver_versions": tuple(g["driver_version"] for g in gpus),
        "gpu_vbios_versions": tuple(g["vbios_version"] for g in gpus),
        "gpu_ueids": tuple(g["ueid"] for g in gpus),
        "gpu_measurement_results": tuple(g["measurement_result"] for g in gpus),
    }


class GpuVerifier:
    """Verifies a node's GPU evidence list; raises ``AttestationError`` (a GPU_* code) on the first failure."""

    def __init__(
        self,
        trust: TrustStore,
        collateral: GpuCollateralSource | None,
        options: GpuVerifyOptions | None = None,
    ) -> None:
        self._trust = trust
        self._collateral = collateral
        self._options = options or GpuVerifyOptions()
        self._cache = GpuVerifierCache()

    def verify(
        self, items: Sequence[GpuEvidenceItem], *, nonce: bytes, now: datetime
    ) -> list[dict[str, Any]]:
        store = self._collateral() if self._collateral is not None else None
        if store is None or not (store.rims or store.revocation.responses or store.revocation.crls):
            raise CollateralError(
                "the collateral store holds no GPU collateral (RIMs, OCSP responses or CRLs)",
                code=Code.GPU_COLLATERAL_MISSING,
                hint="import the GPU collateral for these drivers and VBIOS versions "
                "(sovereign collateral fetch --gpu, then collateral import)",
            )
        try:
            verified = self._verify_all(items, store, nonce=nonce, now=now)
        except AttestationError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as exc:
            raise MalformedEvidence(
                f"GPU evidence could not be read: {type(exc).__name__}", code=Code.GPU_REPORT_MALFORMED
            ) from exc
        return [gpu_claim_entry(c) for c in verified]

    def _verify_all(
        self, items: Sequence[GpuEvidenceItem], store: GpuStoreCollateral, *, nonce: bytes, now: datetime
    ) -> list[GpuClaims]:
        out: list[GpuClaims] = []
        seen: set[str] = set()
        for item in items:
            evidence = GpuEvidence(item.report, item.certificates, item.architecture or None)
            inputs = store.inputs_for(evidence)  # RIMs by the report's versions and the leaf's chip
            claims = verify_gpu(
                evidence,
                nonce=nonce,
                trust=self._trust,
                now=now,
                collateral=inputs.collateral,
                driver_rim=inputs.driver_rim,
                vbios_rim=inputs.vbios_rim,
                options=self._options,
                cache=self._cache,
            )
            # A relayed copy of one GPU's evidence must not count twice.
            if claims.ueid in seen:
                raise EndorsementMismatch(
                    f"GPU {claims.ueid} appears twice in the node's evidence", code=Code.GPU_DUPLICATE_DEVICE
                )
            seen.add(claims.ueid)
            out.append(claims)
        return out
