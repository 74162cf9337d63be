"""Appraisal: every rule passes and fails with its code, all failures come back together; the demo
policy; re-appraisal after a policy change; the claims decoder and ``sovereign policy dry-run``."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from attestation.claims import Claims, TcbStatus, Tee
from policies import (
    Code,
    NodeState,
    PolicyError,
    Verdict,
    appraise,
    claims_from_dict,
    load_default,
    parse_policy,
    reappraise,
)
from policies.summary import notes
from sovereign.cli import main

DEMO_TOML = Path(__file__).resolve().parents[2] / "policies" / "defaults" / "demo.toml"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SNP_M = bytes([0x11]) * 48
MRTD = bytes([0x22]) * 48
HOST = bytes([0x33]) * 32
CONFIG = bytes([0x44]) * 48
SEAM = bytes([0x55]) * 48
OTHER = bytes([0x99]) * 48

# Every optional rule switched on, so each can be seen to pass and to fail.
STRICT = f"""\
schema = 1
[appraisal]
simulated_evidence = "deny"
[appraisal.snp]
products = ["Milan"]
allow_smt = false
require_single_socket = true
max_vmpl = 0
signing_keys = ["vcek"]
[appraisal.snp.min_tcb.Milan]
bootloader = 3
tee = 0
snp = 8
microcode = 115
[[appraisal.snp.groups]]
name = "trainers"
measurements = ["{SNP_M.hex()}"]
host_data = ["{HOST.hex()}"]
[appraisal.tdx]
forbidden_advisories = ["INTEL-SA-00837"]
mrseam = ["{SEAM.hex()}"]
[[appraisal.tdx.groups]]
name = "trainers"
mrconfigid = ["{CONFIG.hex()}"]
[[appraisal.tdx.groups.images]]
mrtd = "{MRTD.hex()}"
rtmr0 = "{bytes(48).hex()}"
rtmr2 = "{bytes(48).hex()}"
"""


def snp(*, details: dict[str, Any] | None = None, **fields: Any) -> Claims:
    base = Claims(
        tee=Tee.SNP,
        product="Milan",
        version=3,
        measurement=SNP_M,
        report_data=bytes(64),
        host_data=HOST,
        debug=False,
        policy=0x130000,
        tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115, "raw": "0300000000000873"},
        tcb_status=TcbStatus.NOT_APPLICABLE,
        platform_id=bytes(64),
        revocation_checked=True,
        details={
            "vmpl": 0,
            "smt_allowed": False,
            "migration_agent_allowed": False,
            "debug_allowed": False,
            "single_socket": True,
            "signing_key": "vcek",
            **(details or {}),
        },
    )
    return replace(base, **fields)


def tdx(*, details: dict[str, Any] | None = None, **fields: Any) -> Claims:
    base = Claims(
        tee=Tee.TDX,
        product="TDX",
        version=4,
        measurement=MRTD,
        report_data=bytes(64),
        host_data=CONFIG,
        debug=False,
        policy=0x10000000,
        tcb={"tee_tcb_svn": "0" * 32},
        tcb_status=TcbStatus.UP_TO_DATE,
        platform_id=bytes(6),
        rtmrs=(bytes(48), OTHER, bytes(48), OTHER),  # RTMR1 and RTMR3 are not pinned
        revocation_checked=True,
        details={
            "mrseam": SEAM.hex(),
            "advisory_ids": [],
            "collateral_expires": (NOW + timedelta(days=30)).isoformat(),
            **(details or {}),
        },
    )
    return replace(base, **fields)


def codes(claims: Claims, text: str = STRICT) -> set[Code]:
    result = appraise(parse_policy(text), claims, now=NOW)
    assert (result.verdict is Verdict.REJECTED) == bool(result.reasons)
    return {r.code for r in result.reasons}


@pytest.mark.parametrize("claims", [snp(), tdx()], ids=["snp", "tdx"])
def test_conforming_claims_are_attested_into_their_group(claims: Claims) -> None:
    result = appraise(parse_policy(STRICT), claims, now=NOW)
    assert result.verdict is Verdict.ATTESTED
    assert result.groups == ("trainers",)
    assert result.reasons == () and result.warnings == ()
    assert result.policy_digest == parse_policy(STRICT).digest


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (snp(simulated=True), {Code.POLICY_SIMULATED_EVIDENCE}),
        (snp(debug=True), {Code.POLICY_DEBUG_FORBIDDEN}),
        (snp(measurement=OTHER), {Code.POLICY_MEASUREMENT_NOT_ALLOWED}),
        (snp(host_data=bytes(32)), {Code.POLICY_HOST_DATA_MISMATCH}),
        (snp(product="Genoa"), {Code.POLICY_PRODUCT_NOT_ALLOWED, Code.POLICY_TCB_BELOW_MINIMUM}),
        (snp(details={"vmpl": 1}), {Code.POLICY_VMPL_TOO_HIGH}),
        (snp(details={"smt_allowed": True}), {Code.POLICY_SMT_FORBIDDEN}),
        (snp(details={"migration_agent_allowed": True}), {Code.POLICY_MIGRATION_AGENT_FORBIDDEN}),
        (snp(details={"single_socket": False}), {Code.POLICY_SINGLE_SOCKET_REQUIRED}),
        (snp(details={"signing_key": "vlek"}), {Code.POLICY_SIGNING_KEY_NOT_ALLOWED}),
        (snp(details={"vmpl": True}), {Code.POLICY_CLAIM_INVALID}),
        (snp(details={"smt_allowed": "no"}), {Code.POLICY_CLAIM_INVALID}),
        (tdx(simulated=True), {Code.POLICY_SIMULATED_EVIDENCE}),
        (tdx(debug=True), {Code.POLICY_DEBUG_FORBIDDEN}),
        (tdx(tcb_status=TcbStatus.OUT_OF_DATE), {Code.POLICY_TCB_STATUS_NOT_ACCEPTED}),
        (tdx(tcb_status=TcbStatus.SW_HARDENING_NEEDED), {Code.POLICY_TCB_STATUS_NOT_ACCEPTED}),
        (
            tdx(details={"advisory_ids": ["INTEL-SA-00837", "INTEL-SA-00001"]}),
            {Code.POLICY_ADVISORY_FORBIDDEN},
        ),
        (tdx(details={"mrseam": OTHER.hex()}), {Code.POLICY_MRSEAM_NOT_ALLOWED}),
        (tdx(measurement=OTHER), {Code.POLICY_MEASUREMENT_NOT_ALLOWED}),
        (tdx(rtmrs=(bytes(48), OTHER, OTHER, OTHER)), {Code.POLICY_RTMR_MISMATCH}),
        (tdx(rtmrs=()), {Code.POLICY_RTMR_MISMATCH}),
        (tdx(host_data=bytes(48)), {Code.POLICY_HOST_DATA_MISMATCH}),
        (tdx(details={"collateral_expires": NOW.isoformat()}), {Code.POLICY_COLLATERAL_EXPIRED}),
        (tdx(details={"collateral_expires": "soon"}), {Code.POLICY_CLAIM_INVALID}),
        (snp(revocation_checked=False), {Code.POLICY_REVOCATION_NOT_CHECKED}),
        (tdx(revocation_checked=False), {Code.POLICY_REVOCATION_NOT_CHECKED}),
    ],
)
def test_each_rule_fails_with_its_code(claims: Claims, expected: set[Code]) -> None:
    assert codes(claims) == expected


def test_fail_closed_when_claims_lack_what_a_rule_needs() -> None:
    bare = snp(details={})
    bare.details.clear()
    assert codes(bare) == {Code.POLICY_CLAIM_INVALID}
    assert (
        len(appraise(parse_policy(STRICT), bare, now=NOW).reasons) == 5
    )  # smt, socket, vmpl, key, migration
    no_tcb = snp(tcb={"bootloader": 3, "tee": 0, "snp": 8})
    assert codes(no_tcb) == {Code.POLICY_CLAIM_INVALID}
    # TDX: a non-UpToDate level must say which advisories apply; expiry of the collateral must be known
    status_ok = STRICT.replace(
        'forbidden_advisories = ["INTEL-SA-00837"]',
        'tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\nforbidden_advisories = ["INTEL-SA-00837"]',
    )
    missing = tdx(tcb_status=TcbStatus.SW_HARDENING_NEEDED)
    del missing.details["advisory_ids"]
    assert codes(missing, status_ok) == {Code.POLICY_CLAIM_INVALID}
    no_expiry = tdx()
    del no_expiry.details["collateral_expires"]
    assert codes(no_expiry) == {Code.POLICY_CLAIM_INVALID}
    # a rule that crashes on a claim of an unexpected type fails instead of passing
    assert codes(tdx(details={"advisory_ids": 7})) == {Code.POLICY_CLAIM_INVALID}
    assert codes(snp(tcb=None)) == {Code.POLICY_RULE_ERROR}


def test_tcb_below_minimum_names_each_component() -> None:
    result = appraise(
        parse_policy(STRICT), snp(tcb={"bootloader": 2, "tee": 0, "snp": 8, "microcode": 100}), now=NOW
    )
    assert [r.code for r in result.reasons] == [Code.POLICY_TCB_BELOW_MINIMUM] * 2
    assert "bootloader is 2, below the minimum 3" in result.reasons[0].message
    assert "microcode is 100, below the minimum 115" in result.reasons[1].message


def test_turin_fmc_minimum() -> None:
    text = STRICT.replace('products = ["Milan"]', 'products = ["Milan", "Turin"]') + (
        "[appraisal.snp.min_tcb.Turin]\nfmc = 2\nbootloader = 1\ntee = 1\nsnp = 1\nmicrocode = 72\n"
    )
    turin = {"fmc": 2, "bootloader": 1, "tee": 1, "snp": 1, "microcode": 72}
    assert codes(snp(product="Turin", tcb=turin), text) == set()
    assert codes(snp(product="Turin", tcb={**turin, "fmc": 1}), text) == {Code.POLICY_TCB_BELOW_MINIMUM}
    assert codes(snp(product="Turin", tcb={k: v for k, v in turin.items() if k != "fmc"}), text) == {
        Code.POLICY_CLAIM_INVALID
    }


def test_every_failing_rule_is_returned_together() -> None:
    bad = snp(
        simulated=True,
        debug=True,
        measurement=OTHER,
        tcb={"bootloader": 3, "tee": 0, "snp": 1, "microcode": 115},
        details={"vmpl": 3, "smt_allowed": True, "migration_agent_allowed": True, "signing_key": "vlek"},
    )
    result = appraise(parse_policy(STRICT), bad, now=NOW)
    assert result.verdict is Verdict.REJECTED and result.groups == ()
    assert {r.code for r in result.reasons} == {
        Code.POLICY_SIMULATED_EVIDENCE,
        Code.POLICY_DEBUG_FORBIDDEN,
        Code.POLICY_MEASUREMENT_NOT_ALLOWED,
        Code.POLICY_TCB_BELOW_MINIMUM,
        Code.POLICY_VMPL_TOO_HIGH,
        Code.POLICY_SMT_FORBIDDEN,
        Code.POLICY_MIGRATION_AGENT_FORBIDDEN,
        Code.POLICY_SIGNING_KEY_NOT_ALLOWED,
    }


def test_policy_switches_relax_their_rule() -> None:
    relaxed = (
        STRICT.replace(
            "allow_smt = false", "allow_smt = true\nforbid_debug = false\nforbid_migration_agent = false"
        )
        .replace("require_single_socket = true", "require_single_socket = false")
        .replace("max_vmpl = 0", "max_vmpl = 2")
        .replace('signing_keys = ["vcek"]', 'signing_keys = ["vcek", "vlek"]')
        .replace('simulated_evidence = "deny"', 'simulated_evidence = "allow"\ncollateral_expired = "warn"')
        .replace(
            "[appraisal.tdx]", '[appraisal.tdx]\ntcb_statuses = ["UpToDate", "Unknown"]\nforbid_debug = false'
        )
    )
    loose = snp(
        simulated=True,
        debug=True,
        details={
            "vmpl": 2,
            "smt_allowed": True,
            "migration_agent_allowed": True,
            "single_socket": False,
            "signing_key": "VLEK",
        },
    )
    assert codes(loose, relaxed) == set()
    stale = tdx(
        simulated=True, debug=True, details={"collateral_expires": (NOW - timedelta(seconds=1)).isoformat()}
    )
    result = appraise(parse_policy(relaxed), stale, now=NOW)
    assert result.verdict is Verdict.ATTESTED
    assert [w.code for w in result.warnings] == [Code.POLICY_COLLATERAL_EXPIRED]
    unknown = tdx(tcb_status=TcbStatus.UNKNOWN)
    del unknown.details["collateral_expires"]
    assert codes(unknown, relaxed) == set()
    assert codes(unknown) == {Code.POLICY_TCB_STATUS_NOT_ACCEPTED}


def test_tee_without_a_section_is_not_allowed() -> None:
    snp_only = STRICT[: STRICT.index("[appraisal.tdx]")]
    assert codes(tdx(), snp_only) == {Code.POLICY_TEE_NOT_ALLOWED}
    assert codes(tdx(simulated=True), snp_only) == {
        Code.POLICY_TEE_NOT_ALLOWED,
        Code.POLICY_SIMULATED_EVIDENCE,
    }


def test_operator_approval_makes_passing_nodes_wait() -> None:
    text = STRICT.replace(
        'simulated_evidence = "deny"', 'simulated_evidence = "deny"\nrequire_operator_approval = true'
    )
    result = appraise(parse_policy(text), snp(), now=NOW)
    assert result.verdict is Verdict.PENDING_APPROVAL and result.groups == ("trainers",)
    assert [r.code for r in result.reasons] == [Code.POLICY_OPERATOR_APPROVAL_REQUIRED]
    assert appraise(parse_policy(text), snp(debug=True), now=NOW).verdict is Verdict.REJECTED


def test_node_joins_every_matching_group() -> None:
    text = STRICT + f'[[appraisal.snp.groups]]\nname = "evaluators"\nmeasurements = ["{SNP_M.hex()}"]\n'
    assert appraise(parse_policy(text), snp(), now=NOW).groups == ("trainers", "evaluators")


def test_naive_now_and_non_claims_are_typed_errors() -> None:
    with pytest.raises(PolicyError) as info:
        appraise(parse_policy(STRICT), snp(), now=datetime(2025, 1, 1))
    assert info.value.code is Code.TIME_INVALID
    with pytest.raises(PolicyError) as info:
        appraise(parse_policy(STRICT), {"tee": "snp"}, now=NOW)  # type: ignore[arg-type]
    assert info.value.code is Code.CLAIMS_INVALID


# ---- the demo policy ----------------------------------------------------------------------------


def demo_snp(**fields: Any) -> Claims:
    return snp(simulated=True, host_data=bytes(32), **fields)


def demo_tdx(**fields: Any) -> Claims:
    return tdx(simulated=True, rtmrs=(bytes(48),) * 4, host_data=bytes(48), **fields)


@pytest.mark.parametrize("claims", [demo_snp(), demo_tdx()], ids=["snp", "tdx"])
def test_demo_policy_accepts_demo_nodes(claims: Claims) -> None:
    result = appraise(load_default("demo"), claims, now=NOW)
    assert (result.verdict, result.groups) == (Verdict.ATTESTED, ("trainers",))


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        (demo_snp(debug=True), Code.POLICY_DEBUG_FORBIDDEN),
        (demo_snp(measurement=OTHER), Code.POLICY_MEASUREMENT_NOT_ALLOWED),
        (
            demo_snp(tcb={"bootloader": 3, "tee": 0, "snp": 7, "microcode": 115}),
            Code.POLICY_TCB_BELOW_MINIMUM,
        ),
        (demo_tdx(debug=True), Code.POLICY_DEBUG_FORBIDDEN),
        (demo_tdx(measurement=OTHER), Code.POLICY_MEASUREMENT_NOT_ALLOWED),
        (demo_tdx(tcb_status=TcbStatus.OUT_OF_DATE), Code.POLICY_TCB_STATUS_NOT_ACCEPTED),
    ],
)
def test_demo_policy_rejects(claims: Claims, code: Code) -> None:
    result = appraise(load_default("demo"), claims, now=NOW)
    assert result.verdict is Verdict.REJECTED
    assert [r.code for r in result.reasons] == [code]


def test_unchecked_revocation_is_denied_by_default_and_warns_only_when_the_policy_says_so() -> None:
    """Security review finding 3: evidence verified without a current CRL (the explicit opt-out for
    archived evidence) must not pass the shipped policies."""
    unchecked = demo_snp(revocation_checked=False)
    for name in ("default", "demo"):
        codes_ = {r.code for r in appraise(load_default(name), unchecked, now=NOW).reasons}
        assert Code.POLICY_REVOCATION_NOT_CHECKED in codes_, name
    warn = parse_policy(
        DEMO_TOML.read_text().replace('unchecked_revocation = "deny"', 'unchecked_revocation = "warn"')
    )
    result = appraise(warn, unchecked, now=NOW)
    assert result.verdict is Verdict.ATTESTED
    assert [r.code for r in result.warnings] == [Code.POLICY_REVOCATION_NOT_CHECKED]
    assert any("revocation" in n for n in notes(warn))


def test_stored_claims_without_the_revocation_field_count_as_unchecked() -> None:
    data = snp().to_dict()
    assert data.pop("revocation_checked") is True
    assert claims_from_dict(data).revocation_checked is False


def test_default_policy_rejects_simulated_and_unlisted_nodes() -> None:
    result = appraise(load_default("default"), demo_snp(), now=NOW)
    assert {r.code for r in result.reasons} == {
        Code.POLICY_SIMULATED_EVIDENCE,
        Code.POLICY_MEASUREMENT_NOT_ALLOWED,
    }


# ---- re-appraisal -------------------------------------------------------------------------------


def test_policy_change_suspends_nodes_that_no_longer_pass() -> None:
    demo = load_default("demo")
    nodes = [
        ("a", demo_snp(), "ATTESTED"),
        ("b", demo_tdx(), "ATTESTED"),
        ("c", demo_snp(), "REVOKED"),
        ("d", demo_snp(measurement=OTHER), "REJECTED"),
    ]
    assert reappraise(demo, nodes, NOW) == []
    stricter = parse_policy(DEMO_TOML.read_text().replace("1" * 96, "3" * 96))
    changes = reappraise(stricter, nodes, NOW)
    assert [(c.node_id, c.old_state, c.new_state) for c in changes] == [
        ("a", NodeState.ATTESTED, NodeState.SUSPENDED)
    ]
    assert [r.code for r in changes[0].reasons] == [Code.POLICY_MEASUREMENT_NOT_ALLOWED]
    assert changes[0].groups == ()


def test_relaxed_policy_reinstates_suspended_and_pending_nodes() -> None:
    demo = load_default("demo")
    nodes = [
        ("s", demo_snp(), "SUSPENDED"),
        ("p", demo_tdx(), "PENDING_APPROVAL"),
        ("r", demo_snp(), "REJECTED"),
    ]
    changes = {c.node_id: c for c in reappraise(demo, nodes, NOW)}
    assert set(changes) == {"s", "p"}
    assert changes["s"].new_state is NodeState.ATTESTED and changes["s"].groups == ("trainers",)
    assert changes["p"].new_state is NodeState.ATTESTED
    pending = [("p", demo_tdx(debug=True), "PENDING_APPROVAL")]
    assert [c.new_state for c in reappraise(demo, pending, NOW)] == [NodeState.REJECTED]


def test_reappraise_rejects_unknown_states() -> None:
    with pytest.raises(PolicyError) as info:
        reappraise(load_default("demo"), [("x", demo_snp(), "HAPPY")], NOW)
    assert info.value.code is Code.NODE_STATE_INVALID


# ---- claims decoder and dry-run -----------------------------------------------------------------


@pytest.mark.parametrize("claims", [snp(), tdx(), demo_tdx(tcb_status=TcbStatus.UNKNOWN)])
def test_claims_round_trip(claims: Claims) -> None:
    assert claims_from_dict(json.loads(json.dumps(claims.to_dict()))) == claims


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.update(extra=1), "claims.extra"),
        (lambda d: d.pop("measurement"), "claims.measurement"),
        (lambda d: d.update(measurement="abc"), "claims.measurement"),
        (lambda d: d.update(tee="sgx"), "claims.tee"),
        (lambda d: d.update(debug=1), "claims.debug"),
        (lambda d: d.update(policy="zz"), "claims.policy"),
        (lambda d: d.update(rtmrs=["00", 5]), "claims.rtmrs[1]"),
    ],
)
def test_claims_decoder_is_strict(mutate: Any, path: str) -> None:
    data = tdx().to_dict()
    mutate(data)
    with pytest.raises(PolicyError) as info:
        claims_from_dict(data)
    assert (info.value.code, info.value.path) == (Code.CLAIMS_INVALID, path)


def test_cli_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text(
        json.dumps(
            [
                {"node_id": "n1", "state": "ATTESTED", "claims": demo_snp().to_dict()},
                {"node_id": "n2", "state": "ATTESTED", "claims": demo_snp(debug=True).to_dict()},
            ]
        )
    )
    args = ["policy", "dry-run", str(DEMO_TOML), "--nodes", str(nodes), "--at", NOW.isoformat()]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 of 2 nodes would change" in out and "n2" in out and "POLICY_DEBUG_FORBIDDEN" in out
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(c["node_id"], c["new_state"]) for c in doc["changes"]] == [("n2", "SUSPENDED")]

    nodes.write_text(json.dumps([{"node_id": "n1", "state": "ATTESTED", "claims": {"tee": "snp"}}]))
    assert main([*args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "CLAIMS_INVALID"
    nodes.write_text("[")
    assert main(args) == 1
    assert "CLAIMS_INVALID" in capsys.readouterr().err
