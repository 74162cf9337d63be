"""Evidence verification as the control plane uses it: the configured trust profile plus collateral
loaded once from the offline store (reloadable after an import). Nothing here touches the network."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from attestation.claims import Claims
from attestation.collateral import Collateral
from attestation.evidence import verify_evidence
from attestation.store import CollateralStore
from attestation.trust import TrustStore


class EvidenceVerifier:
    def __init__(self, trust: TrustStore, collateral_root: Path | None) -> None:
        self.trust = trust
        self.collateral_root = collateral_root
        self._lock = threading.Lock()
        self._collateral = self._read()

    def _read(self) -> Collateral:
        if self.collateral_root is None or not self.collateral_root.exists():
            return Collateral.empty()
        return CollateralStore(self.collateral_root).load()

    def reload(self) -> None:
        """Re-read the collateral store (after an import); raises and keeps the old set on failure."""
        fresh = self._read()
        with self._lock:
            self._collateral = fresh

    def store(self) -> CollateralStore | None:
        return CollateralStore(self.collateral_root) if self.collateral_root is not None else None

    def verify(self, report: bytes, endorsements: Sequence[bytes], now: datetime) -> Claims:
        return verify_evidence(
            report, trust=self.trust, collateral=self._collateral, now=now, endorsements=endorsements
        )
