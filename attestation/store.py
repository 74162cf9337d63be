"""The offline, content-addressed collateral store: the one module in ``attestation`` that does I/O.

Layout::

    STORE/objects/<sha256>   the item's bytes (DER certificate or CRL, Intel JSON exactly as served)
    STORE/index.json         {"version": 1, "items": [{"sha256", "kind", "description", "source", "imported_at"}]}

Objects are immutable and named by their hash, so a tampered object is detected on load. The index is
replaced atomically under an exclusive lock. Nothing here touches the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attestation import collateral_bundle, gpu_collateral
from attestation.collateral import Collateral, CollateralItem, ItemKind, classify, load_certificate
from attestation.errors import AttestationError, ChainInvalid, Code, CollateralError
from attestation.freshness import check_rollback, earliest_next_update, status_rows
from attestation.trust import TrustStore

INDEX_VERSION = 1


@dataclass
class ImportReport:
    added: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    earliest_next_update: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"added": self.added, "unchanged": self.unchanged, "warnings": self.warnings}
        if self.earliest_next_update:
            out["earliest_next_update"] = self.earliest_next_update
        return out


def _store_error(message: str) -> CollateralError:
    return CollateralError(message, code=Code.COLLATERAL_STORE_ERROR)


class CollateralStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._index = self.root / "index.json"

    # -- reading -------------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        if not self._index.exists():
            return []
        try:
            doc = json.loads(self._index.read_text())
        except (OSError, ValueError) as exc:
            raise _store_error(f"cannot read {self._index}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
            raise _store_error(f"{self._index} is not a version-{INDEX_VERSION} collateral index")
        items = doc.get("items", [])
        if not isinstance(items, list):
            raise _store_error(f"{self._index}: items must be a list")
        return items

    def items(self) -> list[CollateralItem]:
        out = []
        for entry in self.entries():
            digest = str(entry.get("sha256", ""))
            path = self._objects / digest
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise _store_error(f"collateral object {digest[:16]} unreadable: {exc}") from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise _store_error(f"collateral object {digest[:16]} does not match its hash (tampered?)")
            out.append(CollateralItem(ItemKind(entry["kind"]), data))
        return out

    def load(self) -> Collateral:
        """Everything in the store as verifier-ready collateral."""
        return Collateral.from_items(self.items())

    def generation(self) -> tuple[int, int, int, int] | None:
        """What changes whenever an import commits (the index is replaced by a new file each time):
        a reader compares it to reload only after a change. None while the store has no index."""
        try:
            st = os.stat(self._index)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _store_error(f"cannot read {self._index}: {exc.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def status(self, now: datetime) -> tuple[list[dict[str, str]], datetime | None]:
        """What expires when (soonest first), and the earliest nextUpdate of any CRL / TCB info / QE id."""
        items = self.items()
        sources = [str(e.get("source", "")) for e in self.entries()]
        return status_rows(zip(items, sources, strict=True), now), earliest_next_update(items)

    # -- writing -------------------------------------------------------------------------------
    def import_files(
        self, paths: Sequence[Path], *, trust: TrustStore, now: datetime, source_names: Sequence[str] = ()
    ) -> ImportReport:
        """Classify, check and store every item of every file; all or nothing."""
        batch: list[tuple[CollateralItem, str]] = []
        for i, path in enumerate(paths):
            name = source_names[i] if i < len(source_names) else str(path)
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise CollateralError(
                    f"cannot read {path}: {exc.strerror}", code=Code.COLLATERAL_MALFORMED
                ) from None
            batch.extend((item, name) for item in classify(data, name))
        return self.import_items(batch, trust=trust, now=now)

    def import_bundle(
        self, data: bytes, *, signers: Sequence[Ed25519PublicKey], trust: TrustStore, now: datetime
    ) -> ImportReport:
        """A signed collateral bundle: its signature first, then every item as ``import_items``."""
        opened = collateral_bundle.open_bundle(data, signers)
        report = self.import_items(opened.items, trust=trust, now=now)
        report.earliest_next_update = opened.earliest_next_update
        return report

    def import_items(
        self, batch: Sequence[tuple[CollateralItem, str]], *, trust: TrustStore, now: datetime
    ) -> ImportReport:
        """All or nothing: chains to pinned roots, vendor signatures, no rollback, then stored."""
        report = ImportReport()
        with self._locked():
            existing = self.entries()
            known = {e["sha256"] for e in existing}
            held = self.items()
            fresh = [item for item, _ in batch if item.sha256 not in known]
            check_rollback(held, fresh)
            candidates = held + [item for item, _ in batch]
            report.warnings.extend(check_items(candidates, [i for i, _ in batch], trust=trust, now=now))
            new_entries = list(existing)
            self._objects.mkdir(parents=True, exist_ok=True)
            for item, source in batch:
                row = {
                    "sha256": item.sha256,
                    "kind": item.kind.value,
                    "description": item.describe(),
                    "source": os.path.basename(source),
                    "imported_at": now.isoformat(),
                }
                if item.sha256 in known:
                    report.unchanged.append(row)
                    continue
                _atomic_write(self._objects / item.sha256, item.data)
                known.add(item.sha256)
                new_entries.append(row)
                report.added.append(row)
            _atomic_write(
                self._index,
                json.dumps({"version": INDEX_VERSION, "items": new_entries}, indent=1).encode(),
            )
        return report

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield
        except OSError as exc:
            raise _store_error(f"collateral store {self.root}: {exc.strerror}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_items(
    everything: Sequence[CollateralItem], new: Sequence[CollateralItem], *, trust: TrustStore, now: datetime
) -> list[str]:
    """What can be checked before storing: every new certificate's chain within the known set ends at a
    pinned root (or its issuer is not known yet: a warning), every new CRL is signed by a known issuer
    (an unknown issuer is refused: an unchecked CRL could later block genuine ones as a rollback), and
    the whole set builds into collateral (which verifies Intel JSON signatures). Raises on anything that
    is wrong; returns warnings."""
    warns: list[str] = []
    certs = [load_certificate(i.data) for i in everything if i.kind is ItemKind.CERTIFICATE]
    by_subject: dict[str, list[x509.Certificate]] = {}
    for c in certs:
        by_subject.setdefault(c.subject.rfc4514_string(), []).append(c)
    warns += gpu_collateral.check_gpu_items(
        certificates=certs,
        held_rims=[i.data for i in everything if i.kind is ItemKind.GPU_RIM and i not in new],
        new_rims=[i.data for i in new if i.kind is ItemKind.GPU_RIM],
        new_ocsp=[i.data for i in new if i.kind is ItemKind.OCSP_RESPONSE],
        trust=trust,
        now=now,
    )
    for item in new:
        if item.kind is ItemKind.CRL:
            _check_crl(item, by_subject)
        if item.kind is not ItemKind.CERTIFICATE:
            continue
        cert = load_certificate(item.data)
        if cert.not_valid_after_utc < now:
            warns.append(f"{item.describe()} expired {cert.not_valid_after_utc.isoformat()}")
        _check_chain(cert, by_subject, trust, warns, item.describe())
    try:
        built = Collateral.from_items(everything)
    except AttestationError as exc:
        raise CollateralError(f"collateral rejected: {exc.message}", code=Code.COLLATERAL_REJECTED) from None
    if built.tdx.unverifiable:
        raise CollateralError(
            f"{', '.join(built.tdx.unverifiable)}: no Intel TCB Signing certificate chain to verify its signature",
            code=Code.COLLATERAL_REJECTED,
            hint="import the TCB-Info-Issuer-Chain / SGX-Enclave-Identity-Issuer-Chain certificates with it",
        )
    return warns


def _check_crl(item: CollateralItem, by_subject: dict[str, list[x509.Certificate]]) -> None:
    """A CRL must be signed by a known certificate named as its issuer (AMD ARK/ASK, Intel CAs)."""
    crl = x509.load_der_x509_crl(item.data)
    issuers = by_subject.get(crl.issuer.rfc4514_string(), [])
    if not issuers:
        raise CollateralError(
            f"{item.describe()}: its issuer '{crl.issuer.rfc4514_string()}' is not in the store or this "
            "import, so its signature cannot be checked",
            code=Code.COLLATERAL_REJECTED,
            hint="import the issuer's certificate (AMD ARK/ASK/ASVK, Intel root or PCK CA) first or in the "
            "same import as the CRL",
        )
    for issuer in issuers:
        try:
            if crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                return
        except (TypeError, ValueError, UnsupportedAlgorithm):
            continue
    raise CollateralError(
        f"{item.describe()} is not signed by its issuer '{crl.issuer.rfc4514_string()}'",
        code=Code.COLLATERAL_REJECTED,
        hint="the CRL was altered or is not AMD's/Intel's; fetch it again",
    )


def _check_chain(
    cert: x509.Certificate,
    by_subject: dict[str, list[x509.Certificate]],
    trust: TrustStore,
    warns: list[str],
    label: str,
) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    current = cert
    for _ in range(6):
        issuers = by_subject.get(current.issuer.rfc4514_string(), [])
        issuer = next((i for i in issuers if _issued_by(current, i)), None)
        if issuer is None:
            if issuers:
                raise CollateralError(
                    f"{label}: signature does not verify with any known issuer '{current.issuer.rfc4514_string()}'",
                    code=Code.COLLATERAL_REJECTED,
                )
            warns.append(f"{label}: issuer '{current.issuer.rfc4514_string()}' not in the store yet")
            return
        if issuer.subject == issuer.issuer:
            der = issuer.public_bytes(Encoding.DER)
            cn = issuer.subject.rfc4514_string()
            try:
                if "ARK-" in cn:
                    trust.check_amd_root(cn.split("ARK-", 1)[1].split(",")[0], der)
                elif gpu_collateral.is_nvidia_name(issuer.subject):
                    gpu_collateral.check_nvidia_root(trust, der)
                else:
                    trust.check_intel_root(der)
            except ChainInvalid as exc:
                raise CollateralError(f"{label}: {exc.message}", code=exc.code) from None
            return
        current = issuer
    raise CollateralError(f"{label}: certificate chain is too long", code=Code.COLLATERAL_REJECTED)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
