"""How fresh each collateral item is (pure): when it stops being usable, and which items it supersedes.

``expiry``: a certificate's notAfter, a CRL's nextUpdate, a TCB info's / QE identity's nextUpdate.
``check_rollback``: a new item must not be older than what the store already holds for the same thing:
TCB info per FMSPC and the TD_QE identity by (tcbEvaluationDataNumber, issueDate), CRLs per issuer by
thisUpdate; NVIDIA RIMs per (product, version) by (tagVersion, signer date) and OCSP answers per
certificate by thisUpdate (``attestation.gpu_collateral``). Otherwise an attacker with an old bundle could
bring back a revoked or out-of-date TCB, a superseded RIM or a "good" answer older than a revocation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from attestation import gpu_collateral
from attestation.collateral import CollateralItem, ItemKind, load_certificate
from attestation.errors import AttestationError, Code, CollateralError
from attestation.tdx import pcs
from attestation.tdx.collateral import parse_collateral_bundle


@dataclass(frozen=True, order=True)
class Freshness:
    """What an item is about (``subject``) and how new it is (``rank``: bigger is newer)."""

    subject: str
    rank: tuple[int, datetime]
    label: str


def _doc(raw: bytes, member: str) -> pcs.TcbInfo | pcs.QeIdentity:
    body = pcs.parse_body(pcs.split_signed(raw, member)[0])
    return pcs.parse_tcb_info(body) if member == "tcbInfo" else pcs.parse_qe_identity(body)


def _crl_subject(crl: x509.CertificateRevocationList) -> str:
    return "crl:" + hashlib.sha256(crl.issuer.public_bytes()).hexdigest()


def freshness(item: CollateralItem) -> list[Freshness]:
    """Raises ``CollateralError`` if the item does not parse."""
    try:
        if item.kind is ItemKind.CRL:
            crl = x509.load_der_x509_crl(item.data)
            return [Freshness(_crl_subject(crl), (0, crl.last_update_utc), item.describe())]
        if item.kind is ItemKind.TDX_TCB_INFO:
            info = _doc(item.data, "tcbInfo")
            assert isinstance(info, pcs.TcbInfo)
            rank = (info.evaluation_data_number, info.issue_date)
            return [Freshness(f"tcbInfo:{info.fmspc.hex()}", rank, f"TCB info for FMSPC {info.fmspc.hex()}")]
        if item.kind is ItemKind.TDX_QE_IDENTITY:
            qe = _doc(item.data, "enclaveIdentity")
            return [
                Freshness("qeIdentity:TD_QE", (qe.evaluation_data_number, qe.issue_date), "TD_QE identity")
            ]
        if item.kind is ItemKind.TDX_BUNDLE:
            tdx = parse_collateral_bundle(item.data)
            out = [
                Freshness(
                    f"tcbInfo:{fmspc.hex()}", (v.number, v.issue_date), f"TCB info for FMSPC {fmspc.hex()}"
                )
                for fmspc, versions in tdx.tcb_infos.items()
                for v in versions
            ]
            out += [
                Freshness("qeIdentity:TD_QE", (q.number, q.issue_date), "TD_QE identity")
                for q in tdx.qe_identities
            ]
            return out + [
                Freshness(_crl_subject(c.crl), (0, c.this_update), "CRL in collateral bundle")
                for c in tdx.crls
            ]
        if item.kind is ItemKind.GPU_RIM:
            rim = gpu_collateral.read_rim(item.data)
            return [Freshness(rim.subject, rim.rank, rim.describe())]
        if item.kind is ItemKind.OCSP_RESPONSE:
            return [
                Freshness(a.subject, (0, a.this_update), f"OCSP answer for serial {a.serial:x}")
                for a in gpu_collateral.ocsp_answers(item.data)
            ]
    except AttestationError:
        raise
    except (ValueError, TypeError, AssertionError) as exc:
        raise CollateralError(
            f"{item.describe()}: does not parse: {exc}", code=Code.COLLATERAL_MALFORMED
        ) from None
    return []  # certificates: many may coexist (re-issued, per chip/TCB); expiry covers them


def check_rollback(held: Iterable[CollateralItem], new: Sequence[CollateralItem]) -> None:
    """Refuse any new item older than the newest held item about the same thing."""
    newest: dict[str, Freshness] = {}
    for item in held:
        for f in freshness(item):
            if f.subject not in newest or f.rank > newest[f.subject].rank:
                newest[f.subject] = f
    for item in new:
        for f in freshness(item):
            current = newest.get(f.subject)
            if current is not None and f.rank < current.rank:
                raise CollateralError(
                    f"{f.label} ({_rank(f.rank)}) is older than the one the store holds ({_rank(current.rank)})",
                    code=Code.COLLATERAL_ROLLBACK,
                    hint="collateral can only move forward; fetch current collateral (sovereign collateral fetch)",
                )


def _rank(rank: tuple[int, datetime]) -> str:
    number, when = rank
    return (f"evaluation data number {number}, " if number else "") + f"issued {when.isoformat()}"


def expiry(item: CollateralItem) -> datetime | None:
    """When the item stops being usable (None: it says nothing)."""
    try:
        if item.kind is ItemKind.CERTIFICATE:
            return load_certificate(item.data).not_valid_after_utc
        if item.kind is ItemKind.CRL:
            return x509.load_der_x509_crl(item.data).next_update_utc
        if item.kind is ItemKind.TDX_TCB_INFO:
            return _doc(item.data, "tcbInfo").next_update
        if item.kind is ItemKind.TDX_QE_IDENTITY:
            return _doc(item.data, "enclaveIdentity").next_update
        if item.kind is ItemKind.GPU_RIM:
            return gpu_collateral.read_rim(item.data).not_after
        if item.kind is ItemKind.OCSP_RESPONSE:
            ends = [a.next_update for a in gpu_collateral.ocsp_answers(item.data)]
            return min(e for e in ends if e is not None) if ends and None not in ends else None
        tdx = parse_collateral_bundle(item.data)
        times = [v.next_update for vs in tdx.tcb_infos.values() for v in vs]
        times += [q.next_update for q in tdx.qe_identities] + [c.next_update for c in tdx.crls]
        return min(times) if times else None
    except (AttestationError, ValueError, TypeError):
        return None


def valid_from(item: CollateralItem) -> datetime | None:
    """When the item starts being usable, where it says (certificate, CRL, RIM signer chain, OCSP)."""
    try:
        if item.kind is ItemKind.CERTIFICATE:
            return load_certificate(item.data).not_valid_before_utc
        if item.kind is ItemKind.CRL:
            return x509.load_der_x509_crl(item.data).last_update_utc
        if item.kind is ItemKind.GPU_RIM:
            return gpu_collateral.read_rim(item.data).not_before
        if item.kind is ItemKind.OCSP_RESPONSE:
            return max(a.this_update for a in gpu_collateral.ocsp_answers(item.data))
    except (AttestationError, ValueError, TypeError):
        return None
    return None


def earliest_next_update(items: Iterable[CollateralItem]) -> datetime | None:
    """The first moment something in ``items`` (a CRL, TCB info or QE identity) must be refreshed."""
    times = [expiry(i) for i in items if i.kind is not ItemKind.CERTIFICATE]
    known = [t for t in times if t is not None]
    return min(known) if known else None


def status_rows(
    items: Iterable[tuple[CollateralItem, str]], now: datetime, soon_days: int = 7
) -> list[dict[str, str]]:
    """One row per item: what it is and when it expires, soonest first."""
    rows = []
    for item, source in items:
        until = expiry(item)
        if until is None:
            state = "unknown"
        elif until < now:
            state = "EXPIRED"
        elif (until - now).days < soon_days:
            state = "expires soon"
        else:
            state = "ok"
        start = valid_from(item)
        rows.append(
            {
                "valid_from": start.isoformat() if start else "",
                "expires": until.isoformat() if until else "",
                "state": state,
                "kind": item.kind.value,
                "description": item.describe(),
                "source": source,
                "sha256": item.sha256,
            }
        )
    return sorted(rows, key=lambda r: (r["expires"] or "9999", r["kind"]))


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
