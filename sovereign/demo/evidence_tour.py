"""Verify simulated evidence of both TEEs, and the real vectors when present, and tabulate verdicts.

Every row goes through ``attestation.evidence.verify_evidence``: simulated evidence with the simulator's
trust store, real evidence with the pinned production roots. Expected failures (debug is *verified*, a
bad signature or a foreign root is *refused*) are part of the tour.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attestation.collateral import Collateral, CollateralItem, classify
from attestation.errors import AttestationError
from attestation.evidence import verify_evidence
from attestation.simulate import Fault, SimulatedPki
from attestation.trust import PRODUCTION, TrustStore


@dataclass(frozen=True)
class Row:
    source: str
    case: str
    expected: str  # "valid" or an error code
    outcome: str  # "valid" or the error code raised
    detail: str

    @property
    def as_expected(self) -> bool:
        return self.expected == self.outcome

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "as_expected": self.as_expected}


def _run(
    source: str,
    case: str,
    expected: str,
    evidence: bytes,
    *,
    trust: TrustStore,
    collateral: Collateral,
    now: datetime,
    endorsements: tuple[bytes, ...] = (),
    require_tcb: bool = True,
    require_revocation: bool = True,
) -> Row:
    try:
        claims = verify_evidence(
            evidence,
            trust=trust,
            collateral=collateral,
            now=now,
            endorsements=endorsements,
            require_tcb=require_tcb,
            require_revocation=require_revocation,
        )
    except AttestationError as err:
        return Row(source, case, expected, err.code.value, err.message[:70])
    detail = f"{claims.product} v{claims.version} debug={claims.debug} tcb={claims.tcb_status.value}"
    detail += "" if claims.revocation_checked else " revocation NOT checked"
    return Row(source, case, expected, "valid", detail)


def _items(raw: dict[str, list[bytes]]) -> list[CollateralItem]:
    return [item for values in raw.values() for data in values for item in classify(data)]


def simulated_rows(now: datetime) -> Iterator[Row]:
    pki = SimulatedPki.generate(now)
    trust = pki.trust_store()
    snp_cases: list[tuple[str, dict[str, Any], str]] = [
        ("Milan v2 VCEK", {"product": "Milan", "version": 2}, "valid"),
        ("Genoa v3 VCEK", {"product": "Genoa", "version": 3}, "valid"),
        ("Turin v5 VLEK", {"product": "Turin", "version": 5, "signing_key": "vlek"}, "valid"),
        ("Milan debug guest", {"debug": True}, "valid"),
        ("bad signature", {"faults": [Fault.BAD_SIGNATURE]}, "SNP_SIGNATURE_INVALID"),
        ("foreign AMD root", {"faults": [Fault.FOREIGN_CHAIN]}, "UNTRUSTED_ROOT"),
        ("revoked ASK", {"faults": [Fault.REVOKED]}, "SNP_CERT_REVOKED"),
    ]
    for case, knobs, expected in snp_cases:
        minted = pki.mint_snp_report(**knobs)
        collateral = Collateral.from_items(_items(minted.collateral))
        yield _run(
            "simulated SNP", case, expected, minted.report, trust=trust, collateral=collateral, now=now
        )
    minted = pki.mint_snp_report()
    yield _run(
        "simulated SNP",
        "no AMD CRL in the collateral",
        "SNP_CRL_MISSING",
        minted.report,
        trust=trust,
        collateral=Collateral.from_items(_items({"certs": minted.collateral["certs"]})),
        now=now,
    )
    collateral = Collateral.from_items(_items(minted.collateral))
    yield _run(
        "simulated SNP",
        "production trust profile",
        "TEST_ROOT_IN_PRODUCTION",
        minted.report,
        trust=PRODUCTION,
        collateral=collateral,
        now=now,
    )
    tdx_cases: list[tuple[str, dict[str, Any], str]] = [
        ("quote v4", {"version": 4}, "valid"),
        ("quote v5, TDX 1.5 body", {"version": 5, "body_type": 3}, "valid"),
        ("debug TD", {"debug": True}, "valid"),
        ("TCB below every level", {"faults": [Fault.TCB_NOT_MATCHED]}, "TDX_TCB_NOT_MATCHED"),
        ("broken QE binding", {"faults": [Fault.QE_BINDING]}, "TDX_QE_BINDING_INVALID"),
        ("expired collateral", {"faults": [Fault.EXPIRED_COLLATERAL]}, "TDX_COLLATERAL_EXPIRED"),
    ]
    for case, knobs, expected in tdx_cases:
        minted_tdx = pki.mint_tdx_quote(**knobs)
        collateral = Collateral.from_items(_items(minted_tdx.collateral))
        yield _run(
            "simulated TDX", case, expected, minted_tdx.quote, trust=trust, collateral=collateral, now=now
        )


def _inside(window: list[str]) -> datetime:
    start, end = (datetime.fromisoformat(w.replace("Z", "+00:00").replace(" ", "T")) for w in window)
    return start + (end - start) / 2


# AMD's KDS CRLs among the vectors are valid 2026-08-19 .. 2026-10-04: VCEK vectors verify inside that.
REAL_CRLS_CURRENT_AT = datetime(2026, 9, 1, tzinfo=UTC)


def real_rows(vectors: Path) -> Iterator[Row]:
    """Each real vector, verified with the pinned production roots: SNP VCEK reports with AMD's CRL inside
    its window; the VLEK report (its leaf expired before that CRL) as archived evidence, without a CRL
    requirement (the claims say so); TDX at a time inside its window."""
    manifest = json.loads((vectors / "MANIFEST.json").read_text())
    chains = {p.name: p.read_bytes() for p in (vectors / "snp" / "certs").glob("kds-cert-chain-*.pem")}
    for entry in manifest:
        if entry["kind"] != "snp-report":
            continue
        exp = entry["expected"]
        leaf = (vectors / exp["signature_verifies_with"]).read_bytes()
        family = "genoa" if "genoa" in entry["file"] else "milan"
        kind = "vlek" if "vlek" in exp["signature_verifies_with"] else "vcek"
        items = classify(leaf) + classify(chains[f"kds-cert-chain-{kind}-{family}.pem"])
        crl = vectors / "snp" / "certs" / f"kds-crl-{family}.der"
        with_crl = kind == "vcek" and crl.is_file()
        name = Path(entry["file"]).name.removesuffix(".report.bin")
        yield _run(
            "real SNP",
            f"{name} (with AMD's CRL)" if with_crl else f"{name} (archived: no CRL check)",
            "valid",
            (vectors / entry["file"]).read_bytes(),
            trust=PRODUCTION,
            collateral=Collateral.from_items(items + (classify(crl.read_bytes()) if with_crl else [])),
            now=REAL_CRLS_CURRENT_AT if with_crl else _inside(exp["certificates_all_valid_between"]),
            require_revocation=with_crl,
        )
    bundle = vectors / "tdx" / "v4-dcapqvl.collateral.json"
    for entry in manifest:
        if entry["kind"] != "tdx-quote":
            continue
        exp = entry["expected"]
        name = Path(entry["file"]).name.removesuffix(".quote.bin")
        quote = (vectors / entry["file"]).read_bytes()
        if name == "v4-dcapqvl":
            yield _run(
                "real TDX",
                f"{name} (full, with collateral)",
                "valid",
                quote,
                trust=PRODUCTION,
                collateral=Collateral.from_items(classify(bundle.read_bytes())),
                now=_inside(exp["collateral_all_current_between"]),
            )
        validity = exp["pck_leaf"]["validity"]
        yield _run(
            "real TDX",
            f"{name} (signatures + PCK chain)",
            "valid",
            quote,
            trust=PRODUCTION,
            collateral=Collateral.empty(),
            now=_inside(validity),
            require_tcb=False,
        )


def vectors_dir() -> Path | None:
    env = os.environ.get("SOVEREIGN_VECTORS")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
    return path if (path / "MANIFEST.json").is_file() else None


def tour(now: datetime | None = None) -> list[Row]:
    now = now or datetime.now(UTC)
    rows = list(simulated_rows(now))
    vectors = vectors_dir()
    if vectors is not None:
        rows.extend(real_rows(vectors))
    return rows
