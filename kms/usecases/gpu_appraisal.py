"""The node's GPUs at registration: verify each GPU's evidence against the transcript-derived nonce, with
offline collateral, into the claim entries stored beside the CPU claims (``details["gpus"]``).

Collateral comes from ``<collateral store>/gpu/``: ``rims/`` (NVIDIA RIM files, XML), ``ocsp/`` (DER OCSP
responses) and ``crls/`` (DER CRLs). This folder is an interim layout until the collateral store holds GPU
items itself (``collateral fetch --gpu``, bundles); it is re-read when its files change. Fail closed: no
folder, no RIM for a reported version, no revocation answer -> ``GPU_COLLATERAL_MISSING`` (the verifier's
code), never a GPU accepted on less. No network; the clock is passed in.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from attestation.errors import AttestationError, Code, CollateralError, MalformedEvidence
from attestation.gpu import (
    GpuClaims,
    GpuCollateral,
    GpuEvidence,
    GpuVerifierCache,
    GpuVerifyOptions,
    verify_gpus,
    verify_rim,
)
from attestation.trust import TrustStore
from proto.contract import GpuEvidenceItem

MAX_FILE = 1 << 20
MAX_FILES = 4096
_Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class GpuCollateralSet:
    """What one verification uses: RIMs by version, and the revocation answers."""

    rims: dict[str, bytes]  # Meta colloquialVersion (driver or VBIOS version) -> RIM bytes
    revocation: GpuCollateral

    def lookup(self, driver_version: str, vbios_version: str) -> tuple[bytes | None, bytes | None]:
        return self.rims.get(driver_version), self.rims.get(vbios_version)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file())[:MAX_FILES]


def _read(path: Path) -> bytes | None:
    try:
        if path.stat().st_size > MAX_FILE:
            return None
        return path.read_bytes()
    except OSError:
        return None


class GpuCollateralFolder:
    """The interim GPU collateral folder, read once per change of its files."""

    def __init__(self, root: Path, trust: TrustStore) -> None:
        self.root = root
        self._trust = trust
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._set: GpuCollateralSet | None = None

    def _signature_now(self) -> _Signature:
        out = []
        for sub in ("rims", "ocsp", "crls"):
            for path in _files(self.root / sub):
                try:
                    st = path.stat()
                except OSError:
                    continue
                out.append((f"{sub}/{path.name}", st.st_mtime_ns, st.st_size))
        return tuple(out)

    def current(self, now: datetime) -> GpuCollateralSet | None:
        """The collateral as the folder holds it now; None when it holds nothing."""
        signature = self._signature_now()
        with self._lock:
            if signature != self._signature:
                self._set = self._load(now) if signature else None
                self._signature = signature
            return self._set

    def _load(self, now: datetime) -> GpuCollateralSet:
        rims: dict[str, bytes] = {}
        for path in _files(self.root / "rims"):
            data = _read(path)
            if data is None:
                continue
            try:  # only to learn the version it is for; verify_gpu judges it (windows included) per call
                rim = verify_rim(data, trust=self._trust, now=now, accept_expired_certificates=True)
            except AttestationError:
                continue  # a RIM that does not verify answers for nothing: its version stays missing
            rims.setdefault(rim.version, data)
        responses = [d for p in _files(self.root / "ocsp") if (d := _read(p)) is not None]
        crls = [d for p in _files(self.root / "crls") if (d := _read(p)) is not None]
        return GpuCollateralSet(rims, GpuCollateral(ocsp_responses=responses, crls=crls))


def save_gpu_collateral(
    root: Path, *, rims: Sequence[bytes], ocsp_responses: Sequence[bytes], crls: Sequence[bytes]
) -> None:
    """Write collateral into the interim folder layout (development and tests; names by content digest)."""
    for sub, items, suffix in (
        ("rims", rims, ".xml"),
        ("ocsp", ocsp_responses, ".der"),
        ("crls", crls, ".der"),
    ):
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        for data in items:
            target = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)


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


class GpuVerifier:
    """Verifies a node's GPU evidence list; raises ``AttestationError`` (a GPU_* code) on the first failure."""

    def __init__(
        self, trust: TrustStore, folder: GpuCollateralFolder | None, options: GpuVerifyOptions | None = None
    ) -> None:
        self._trust = trust
        self._folder = folder
        self._options = options or GpuVerifyOptions()
        self._cache = GpuVerifierCache()

    def verify(
        self, items: Sequence[GpuEvidenceItem], *, nonce: bytes, now: datetime
    ) -> list[dict[str, Any]]:
        collateral = self._folder.current(now) if self._folder is not None else None
        if collateral is None:
            raise CollateralError(
                "this control plane holds no GPU collateral (RIMs, OCSP responses or CRLs)",
                code=Code.GPU_COLLATERAL_MISSING,
                hint="import the GPU collateral for these drivers and VBIOS versions",
            )
        evidence = [GpuEvidence(i.report, i.certificates, i.architecture or None) for i in items]
        try:
            verified = verify_gpus(
                evidence,
                nonce=nonce,
                trust=self._trust,
                now=now,
                collateral=collateral.revocation,
                rims=collateral.lookup,
                options=self._options,
                cache=self._cache,
            )
        except AttestationError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError) as exc:
            raise MalformedEvidence(
                f"GPU evidence could not be read: {type(exc).__name__}", code=Code.GPU_REPORT_MALFORMED
            ) from exc
        return [gpu_claim_entry(c) for c in verified]
