"""Intel's TCB level matching and status convergence, on synthetic and real TCB infos."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attestation.claims import TcbStatus
from attestation.errors import AttestationError, Code
from attestation.tdx import QeReport, TdxCollateral, parse_collateral_bundle, parse_quote, tcb
from attestation.tdx.pck import load_pck_chain
from attestation.tdx.pcs import IsvLevel, ModuleIdentity, QeIdentity, TcbInfo, TcbLevel
from attestation.trust import PRODUCTION

T = datetime(2025, 1, 1, tzinfo=UTC)
ZERO48, ZERO8 = bytes(48), bytes(8)
S = TcbStatus


def pad(values: list[int]) -> tuple[int, ...]:
    return tuple(values + [0] * (16 - len(values)))


def level(sgx: list[int], pcesvn: int, tdx: list[int], status: str, adv: tuple[str, ...] = ()) -> TcbLevel:
    return TcbLevel(pad(sgx), pcesvn, pad(tdx), "2024-01-01T00:00:00Z", status, adv)


def isv(svn: int, status: str, adv: tuple[str, ...] = ()) -> IsvLevel:
    return IsvLevel(svn, "2024-01-01T00:00:00Z", status, adv)


def info(levels: list[TcbLevel], identities: tuple[ModuleIdentity, ...] | None = None) -> TcbInfo:
    module = ModuleIdentity("", ZERO48, ZERO8, b"\xff" * 8, ())
    return TcbInfo(T, T, bytes(6), bytes(2), 1, module, identities, tuple(levels))


def module(ident: str, levels: list[IsvLevel], mrsigner: bytes = ZERO48) -> ModuleIdentity:
    return ModuleIdentity(ident, mrsigner, ZERO8, b"\xff" * 8, tuple(levels))


QE_OK = tcb.QeResult(S.UP_TO_DATE, isv(4, "UpToDate"))
QE_OLD = tcb.QeResult(S.OUT_OF_DATE, isv(2, "OutOfDate", ("INTEL-SA-QE",)))


def svn(*head: int) -> bytes:
    return bytes(head) + bytes(16 - len(head))


def evaluate(
    ti: TcbInfo, comps: list[int], pcesvn: int, tee: bytes, qe: tcb.QeResult = QE_OK, **kw: Any
) -> tcb.TcbResult:
    args: dict[str, Any] = {"tee_tcb_svn2": None, "mrsignerseam": ZERO48, "seam_attributes": ZERO8, **kw}
    return tcb.evaluate(ti, comp_svns=pad(comps), pcesvn=pcesvn, tee_tcb_svn=tee, qe=qe, **args)


def code_of(fn: Any, *args: Any, **kwargs: Any) -> Code:
    with pytest.raises(AttestationError) as exc:
        fn(*args, **kwargs)
    return exc.value.code


LEVELS = [
    level([5, 5], 11, [3, 0, 5], "UpToDate"),
    level([5, 5], 11, [3, 0, 4], "SWHardeningNeeded", ("SA-1",)),
    level([2, 2], 5, [2, 0, 2], "OutOfDate", ("SA-2", "SA-3")),
]


def test_first_level_whose_components_are_all_lower_or_equal() -> None:
    ti = info(LEVELS)
    assert evaluate(ti, [5, 5], 11, svn(3, 0, 5)).status is S.UP_TO_DATE
    assert evaluate(ti, [9, 9], 12, svn(9, 0, 9)).status is S.UP_TO_DATE
    r = evaluate(ti, [5, 5], 11, svn(3, 0, 4))
    assert (r.status, r.advisory_ids) == (S.SW_HARDENING_NEEDED, ("SA-1",))
    assert evaluate(ti, [5, 5], 10, svn(3, 0, 5)).status is S.OUT_OF_DATE  # PCESVN below levels 1-2
    assert evaluate(ti, [5, 4], 11, svn(3, 0, 5)).status is S.OUT_OF_DATE  # one SGX component below


def test_comparison_is_per_component_not_lexicographic() -> None:
    ti = info([level([2, 2], 5, [0], "UpToDate")])
    # [3, 1] is lexicographically greater than [2, 2], but component 1 is lower: no level matches.
    assert code_of(evaluate, ti, [3, 1], 5, svn()) is Code.TDX_TCB_NOT_MATCHED
    assert code_of(evaluate, info(LEVELS), [5, 5], 11, svn(1, 0, 1)) is Code.TDX_TCB_NOT_MATCHED


def test_module_identity_replaces_the_first_two_tdx_components() -> None:
    identities = (module("TDX_01", [isv(6, "UpToDate"), isv(4, "OutOfDate", ("SA-M",))]),)
    ti = info([level([1], 0, [9, 9, 3], "UpToDate")], identities)
    # TEE_TCB_SVN 0b 01 03: bytes 0-1 (9, 9 in the level) are not compared; module ISVSVN 11 >= 6.
    r = evaluate(ti, [1], 0, svn(11, 1, 3))
    assert (r.status, r.module_status) == (S.UP_TO_DATE, S.UP_TO_DATE)
    r = evaluate(ti, [1], 0, svn(5, 1, 3))
    assert (r.status, r.module_status, r.advisory_ids) == (S.OUT_OF_DATE, S.OUT_OF_DATE, ("SA-M",))
    assert code_of(evaluate, ti, [1], 0, svn(3, 1, 3)) is Code.TDX_TCB_NOT_MATCHED  # below every module level
    assert code_of(evaluate, ti, [1], 0, svn(11, 1, 2)) is Code.TDX_TCB_NOT_MATCHED  # byte 2 still compared
    assert code_of(evaluate, ti, [1], 0, svn(11, 2, 3)) is Code.TDX_MODULE_MISMATCH  # no TDX_02
    assert code_of(evaluate, info(list(ti.levels)), [1], 0, svn(11, 1, 3)) is (
        Code.TDX_COLLATERAL_MISMATCH  # major version 1 but no tdxModuleIdentities at all
    )


def test_module_signer_and_attributes() -> None:
    ti = info([level([1], 0, [0], "UpToDate")])
    assert code_of(evaluate, ti, [1], 0, svn(), mrsignerseam=b"\x01" * 48) is Code.TDX_MODULE_MISMATCH
    assert (
        code_of(evaluate, ti, [1], 0, svn(), seam_attributes=b"\x01" + bytes(7)) is Code.TDX_MODULE_MISMATCH
    )
    other = (module("TDX_03", [isv(0, "UpToDate")], mrsigner=b"\x02" * 48),)
    ti3 = info([level([1], 0, [0], "UpToDate")], other)
    assert code_of(evaluate, ti3, [1], 0, svn(1, 3)) is Code.TDX_MODULE_MISMATCH
    assert evaluate(ti3, [1], 0, svn(1, 3), mrsignerseam=b"\x02" * 48).status is S.UP_TO_DATE


@pytest.mark.parametrize(
    ("platform", "other", "want"),
    [
        (S.UP_TO_DATE, S.UP_TO_DATE, S.UP_TO_DATE),
        (S.UP_TO_DATE, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE),
        (S.CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.CONFIGURATION_AND_SW_HARDENING_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.OUT_OF_DATE_CONFIGURATION_NEEDED, S.OUT_OF_DATE, S.OUT_OF_DATE_CONFIGURATION_NEEDED),
        (S.CONFIGURATION_NEEDED, S.UP_TO_DATE, S.CONFIGURATION_NEEDED),
        (S.UP_TO_DATE, S.REVOKED, S.REVOKED),
    ],
)
def test_convergence(platform: TcbStatus, other: TcbStatus, want: TcbStatus) -> None:
    assert tcb.converge(platform, other) is want


def test_qe_status_converges_and_revoked_is_an_error() -> None:
    ti = info([level([1], 0, [0], "ConfigurationNeeded", ("SA-P",))])
    r = evaluate(ti, [1], 0, svn(), qe=QE_OLD)
    assert (r.status, r.advisory_ids) == (S.OUT_OF_DATE_CONFIGURATION_NEEDED, ("SA-P", "INTEL-SA-QE"))
    revoked_qe = tcb.QeResult(S.REVOKED, isv(1, "Revoked"))
    assert code_of(evaluate, ti, [1], 0, svn(), qe=revoked_qe) is Code.TDX_TCB_REVOKED
    assert code_of(evaluate, info([level([1], 0, [0], "Revoked")]), [1], 0, svn()) is Code.TDX_TCB_REVOKED
    identities = (module("TDX_01", [isv(0, "Revoked")]),)
    assert code_of(evaluate, info([level([1], 0, [0], "UpToDate")], identities), [1], 0, svn(1, 1)) is (
        Code.TDX_TCB_REVOKED
    )


def test_relaunch_advised_is_reported_without_changing_status() -> None:
    identities = (module("TDX_01", [isv(6, "UpToDate"), isv(2, "OutOfDate")]),)
    ti = info([level([1], 0, [0, 0, 3], "UpToDate")], identities)
    r = evaluate(ti, [1], 0, svn(4, 1, 3), tee_tcb_svn2=svn(6, 1, 3))
    assert (r.status, r.relaunch_advised) == (S.OUT_OF_DATE, True)
    assert evaluate(ti, [1], 0, svn(4, 1, 3), tee_tcb_svn2=svn(5, 1, 3)).relaunch_advised is False
    assert evaluate(ti, [1], 0, svn(4, 1, 3), tee_tcb_svn2=None).relaunch_advised is False


def _qe_identity(**kw: Any) -> QeIdentity:
    base: dict[str, Any] = {
        "issue_date": T,
        "next_update": T,
        "evaluation_data_number": 1,
        "miscselect": 0,
        "miscselect_mask": 0xFFFFFFFF,
        "attributes": bytes.fromhex("11000000000000000000000000000000"),
        "attributes_mask": bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000"),
        "mrsigner": bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"),
        "isvprodid": 2,
        "levels": (isv(4, "UpToDate"), isv(2, "OutOfDate")),
    }
    return QeIdentity(**{**base, **kw})


@pytest.fixture(scope="module")
def qe_report(vectors: Path) -> QeReport:
    quote = parse_quote((vectors / "tdx/v4-dcapqvl.quote.bin").read_bytes())
    return QeReport.parse(quote.qe_report)


def test_qe_identity_matching(qe_report: QeReport) -> None:
    assert qe_report.attributes[0] == 0x15  # bit 2 (masked out by FB) is set: the mask must be applied
    assert qe_report.isvsvn == 6
    assert tcb.check_qe_identity(_qe_identity(), qe_report).status is S.UP_TO_DATE
    newer = (isv(7, "UpToDate"), isv(6, "OutOfDate", ("SA-Q",)), isv(1, "Revoked"))
    result = tcb.check_qe_identity(_qe_identity(levels=newer), qe_report)
    assert (result.status, result.level.advisory_ids) == (S.OUT_OF_DATE, ("SA-Q",))
    assert code_of(tcb.check_qe_identity, _qe_identity(levels=(isv(7, "UpToDate"),)), qe_report) is (
        Code.TDX_TCB_NOT_MATCHED
    )
    for change in (
        {"mrsigner": bytes(32)},
        {"isvprodid": 1},
        {"miscselect": 1},
        {"attributes_mask": b"\xff" * 16},
        {"attributes": bytes(16)},
    ):
        assert (
            code_of(tcb.check_qe_identity, _qe_identity(**change), qe_report) is Code.TDX_QE_IDENTITY_MISMATCH
        )


def test_v5_sample_status_from_its_signed_tcb_info(vectors: Path) -> None:
    # The full check of this quote cannot run (no QE identity / PCK CRL is current in 2026; see
    # test_tdx_verify.py), so the TCB status is decided from its own signed TCB info by Intel's rules:
    # TEE_TCB_SVN 0b 01 04 -> module major 1 -> identity TDX_01, ISVSVN 11 >= 6 (UpToDate); TDX component 2:
    # 4 >= 3; PCK SGX SVNs 4,4,2,2,4,1,0,5 >= 3,3,2,2,4,1,0,5 and PCESVN 13 >= 13 -> first level
    # (UpToDate); QE ISVSVN 7 >= 4 (the TD_QE level of every QE identity shipped) -> UpToDate.
    data = (vectors / "tdx/v5-gotdxguest-sample.quote.bin").read_bytes()
    quote = parse_quote(data)
    sgx = load_pck_chain(quote.pck_chain_pem).sgx
    col = TdxCollateral.from_items(
        tcb_infos=[(vectors / "tdx/v5-gotdxguest-sample.tcb_info.json").read_bytes()],
        certs=[(vectors / "tdx/gotdxguest.tcb_signing_chain.pem").read_bytes()],
    ).merged(parse_collateral_bundle((vectors / "tdx/v4-dcapqvl.collateral.json").read_bytes()))
    at = datetime(2026, 2, 3, 1, tzinfo=UTC)
    ti = col.tcb_info(sgx.fmspc, PRODUCTION, at)[0].doc
    (identity,) = col.qe_identities
    qe = tcb.check_qe_identity(identity.doc, QeReport.parse(quote.qe_report))
    result = tcb.evaluate(
        ti,
        comp_svns=sgx.comp_svns,
        pcesvn=sgx.pcesvn,
        tee_tcb_svn=quote.tee_tcb_svn,
        tee_tcb_svn2=quote.tee_tcb_svn2,
        mrsignerseam=quote.mrsignerseam,
        seam_attributes=quote.seam_attributes,
        qe=qe,
    )
    assert (result.status, result.module_status, result.advisory_ids) == (S.UP_TO_DATE, S.UP_TO_DATE, ())
    assert result.module_level is not None and result.module_level.isvsvn == 6
    assert result.level.tcb_date == "2024-11-13T00:00:00Z"
