"""Evidence verification as the control plane uses it: the configured trust profile plus collateral
from the offline store. Nothing here touches the network.

The store is shared with ``sovereign collateral import`` run on the same host, so the collateral in
memory follows it: before each verification the store's generation (its index file's identity) is
compared with the one loaded, and a changed store is re-read first. A store that cannot be re-read
fails that verification with its coded error (never the stale set: a newly imported CRL must apply).

Imports over the Admin RPC follow the configured collateral signers: with signers, only a bundle
signed by one of them is accepted; without, only loose items (each still checked against the pinned
roots and the vendors' signatures), since a bundle's signature could not be checked.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attestation import collateral_bundle
from attestation.claims import Claims
from attestation.collateral import Collateral, classify
from attestation.errors import AttestationError, Code, CollateralError
from attestation.evidence import verify_evidence
from attestation.store import CollateralStore, ImportReport
from attestation.trust import TrustStore
from kms.errors import Code as KmsCode
from kms.errors import KmsError

_Generation = tuple[int, int, int, int] | None


def load_signers(paths: str) -> tuple[Ed25519PublicKey, ...]:
    """The ``collateral_signers`` option: comma-separated PEM public keys (``NAME.pub.pem``)."""
    keys = []
    for name in (p.strip() for p in paths.split(",")):
        if not name:
            continue
        try:
            keys.append(collateral_bundle.public_key_from_pem(Path(name).read_bytes()))
        except OSError as exc:
            raise KmsError(
                f"cannot read collateral signer key {name}: {exc.strerror}",
                code=KmsCode.SERVER_CONFIG_INVALID,
            ) from None
        except AttestationError as err:
            raise KmsError(
                f"collateral signer key {name}: {err.message}", code=KmsCode.SERVER_CONFIG_INVALID
            ) from None
    return tuple(keys)


class EvidenceVerifier:
    def __init__(
        self,
        trust: TrustStore,
        collateral_root: Path | None,
        *,
        signers: Sequence[Ed25519PublicKey] = (),
    ) -> None:
        self.trust = trust
        self.collateral_root = collateral_root
        self.signers = tuple(signers)
        self._lock = threading.Lock()
        self._generation = self._current_generation()  # before reading: a change in between reloads
        self._collateral = self._read()

    def _current_generation(self) -> _Generation:
        store = self.store()
        return store.generation() if store is not None else None

    def _read(self) -> Collateral:
        if self.collateral_root is None or not self.collateral_root.exists():
            return Collateral.empty()
        return CollateralStore(self.collateral_root).load()

    def reload(self) -> None:
        """Re-read the collateral store now; raises and keeps the old set on failure."""
        with self._lock:
            generation = self._current_generation()
            fresh = self._read()
            self._collateral, self._generation = fresh, generation

    def collateral(self) -> Collateral:
        """The store's collateral as of now: re-read first when an import changed the store."""
        if self._current_generation() == self._generation:
            return self._collateral
        with self._lock:
            generation = self._current_generation()
            if generation != self._generation:
                fresh = self._read()  # a failure propagates: this verification is refused
                self._collateral, self._generation = fresh, generation
            return self._collateral

    def store(self) -> CollateralStore | None:
        return CollateralStore(self.collateral_root) if self.collateral_root is not None else None

    def import_collateral(self, data: bytes, now: datetime) -> ImportReport:
        """An Admin import: signed bundle or loose items per the configured signers; then reloaded."""
        store = self.store()
        if store is None:
            raise KmsError("no collateral store is configured", code=KmsCode.SERVER_CONFIG_INVALID)
        if collateral_bundle.is_bundle(data):
            if not self.signers:
                raise CollateralError(
                    "a signed collateral bundle was sent, but no collateral signer is configured to check "
                    "its signature",
                    code=Code.COLLATERAL_BUNDLE_INVALID,
                    hint="set collateral_signers to the bundle signer's NAME.pub.pem, or send the items",
                )
            report = store.import_bundle(data, signers=self.signers, trust=self.trust, now=now)
        else:
            if self.signers:
                raise CollateralError(
                    "collateral signers are configured: only a bundle signed by one of them is accepted, "
                    "not unsigned items",
                    code=Code.COLLATERAL_BUNDLE_INVALID,
                    hint="sign the items on the connected side (sovereign collateral fetch, or sovereign "
                    "collateral bundle create FILES --key KEY --out BUNDLE) and import the bundle",
                )
            items = [(item, "ImportCollateral") for item in classify(data, "ImportCollateral")]
            report = store.import_items(items, trust=self.trust, now=now)
        self.reload()
        return report

    def verify(self, report: bytes, endorsements: Sequence[bytes], now: datetime) -> Claims:
        return verify_evidence(
            report, trust=self.trust, collateral=self.collateral(), now=now, endorsements=endorsements
        )
