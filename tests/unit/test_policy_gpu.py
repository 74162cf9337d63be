"""``[appraisal.gpu]``: each rule fails with its code and all failures come back together; GPU-attested
groups (count, UEID allow-list); release rules requiring GPU-attested groups (checked at load); a policy
without GPU rules keeps its digest and ignores GPUs; re-appraisal from stored claims alone."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
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
    parse_policy,
    reappraise,
)

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
SNP_M = bytes([0x11]) * 48
UEID_A = "NVIDIA:GH100:AAAAAAAAAAAAAAAA"
UEID_B = "NVIDIA:GH100:BBBBBBBBBBBBBBBB"

BASE = f"""\
schema = 1
[appraisal]
simulated_evidence = "allow"
[appraisal.snp]
products = ["Milan"]
[appraisal.snp.min_tcb.Milan]
bootloader = 3
tee = 0
snp = 8
microcode = 115
[[appraisal.snp.groups]]
name = "trainers"
measurements = ["{SNP_M.hex()}"]
[[appraisal.snp.groups]]
name = "gpu-trainers"
measurements = ["{SNP_M.hex()}"]
"""
GPU = """\
[appraisal.gpu]
min_count = 1
architectures = ["HOPPER"]
min_driver = "550.54.14"
vbios_versions = ["96.00.9F.00.01"]
require_rim_match = true
require_cc_mode = true
[[appraisal.gpu.groups]]
name = "gpu-trainers"
min_count = 2
ueids = ["NVIDIA:GH100:AAAAAAAAAAAAAAAA", "NVIDIA:GH100:BBBBBBBBBBBBBBBB"]
"""
RELEASE = """\
[[release.rules]]
name = "gpu-models"
groups = ["gpu-trainers"]
keys = ["model/*"]
purposes = ["read"]
require_gpu_attested = true
"""


def gpu(ueid: str = UEID_A, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "architecture": "HOPPER",
        "chip": "GH100",
        "ueid": ueid,
        "fwid": "00" * 48,
        "driver_version": "550.90.07",
        "vbios_version": "96.00.9F.00.01",
        "measurement_result": "success",
        "rim_versions_match": True,
        "cc_mode": "on",
        "revocation": "good",
        "simulated": False,
    }
    entry.update(fields)
    return entry


def node(*gpus: dict[str, Any] | None) -> Claims:
    details: dict[str, Any] = {
        "vmpl": 0,
        "smt_allowed": False,
        "migration_agent_allowed": False,
        "debug_allowed": False,
        "single_socket": True,
        "signing_key": "vcek",
    }
    if gpus != (None,):
        details["gpus"] = list(gpus)
    return Claims(
        tee=Tee.SNP, product="Milan", version=3, measurement=SNP_M, report_data=bytes(64), host_data=bytes(32),
        debug=False, policy=0x30000, tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        tcb_status=TcbStatus.NOT_APPLICABLE, platform_id=bytes(64), revocation_checked=True, details=details,
    )  # fmt: skip


def result(claims: Claims, text: str = BASE + GPU) -> tuple[Verdict, tuple[str, ...], list[Code]]:
    out = appraise(parse_policy(text), claims, now=NOW)
    return out.verdict, out.groups, [r.code for r in out.reasons]


def test_two_listed_gpus_are_attested_into_the_gpu_group() -> None:
    assert result(node(gpu(UEID_A), gpu(UEID_B))) == (Verdict.ATTESTED, ("trainers", "gpu-trainers"), [])


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        (gpu(architecture="BLACKWELL"), Code.POLICY_GPU_ARCHITECTURE_NOT_ALLOWED),
        (gpu(driver_version="535.86.09"), Code.POLICY_GPU_DRIVER_BELOW_MINIMUM),
        (gpu(vbios_version="96.00.5E.00.01"), Code.POLICY_GPU_VBIOS_NOT_ALLOWED),
        (gpu(measurement_result="not-compared"), Code.POLICY_GPU_RIM_NOT_MATCHED),
        (gpu(rim_versions_match=False), Code.POLICY_GPU_RIM_NOT_MATCHED),
        (gpu(cc_mode="devtools"), Code.POLICY_GPU_CC_MODE_REQUIRED),
        (gpu(driver_version="r550"), Code.POLICY_CLAIM_INVALID),
        (gpu(cc_mode=None), Code.POLICY_CLAIM_INVALID),
    ],
)
def test_each_rule_fails_with_its_code(entry: dict[str, Any], code: Code) -> None:
    verdict, groups, codes = result(node(gpu(UEID_B), entry))
    assert verdict is Verdict.REJECTED and groups == ()
    assert code in codes


def test_every_failure_is_reported_together() -> None:
    bad = gpu(architecture="BLACKWELL", driver_version="535.86.09", vbios_version="96.00.5E.00.01",
              measurement_result="not-compared", cc_mode="off")  # fmt: skip
    _, _, codes = result(node(bad, gpu(UEID_B, cc_mode="off")))
    assert codes.count(Code.POLICY_GPU_CC_MODE_REQUIRED) == 2  # one per GPU
    assert set(codes) >= {
        Code.POLICY_GPU_ARCHITECTURE_NOT_ALLOWED,
        Code.POLICY_GPU_DRIVER_BELOW_MINIMUM,
        Code.POLICY_GPU_VBIOS_NOT_ALLOWED,
        Code.POLICY_GPU_RIM_NOT_MATCHED,
    }


def test_a_node_without_gpus_fails_a_policy_requiring_them() -> None:
    assert result(node(None)) == (Verdict.REJECTED, (), [Code.POLICY_GPU_COUNT])
    assert result(node()) == (Verdict.REJECTED, (), [Code.POLICY_GPU_COUNT])


def test_gpu_group_needs_its_count_and_listed_devices() -> None:
    # one GPU: the node-wide minimum (1) passes, the GPU-attested group (2) is withheld
    assert result(node(gpu(UEID_A))) == (Verdict.ATTESTED, ("trainers",), [])
    stranger = gpu("NVIDIA:GH100:CCCCCCCCCCCCCCCC")
    assert result(node(gpu(UEID_A), stranger)) == (Verdict.ATTESTED, ("trainers",), [])
    only_gpu_group = BASE.replace('name = "trainers"', 'name = "cpu-only"').replace(
        f'[[appraisal.snp.groups]]\nname = "cpu-only"\nmeasurements = ["{SNP_M.hex()}"]\n', ""
    )
    assert result(node(gpu(UEID_A), stranger), only_gpu_group + GPU) == (
        Verdict.REJECTED,
        (),
        [Code.POLICY_GPU_UEID_NOT_ALLOWED],
    )
    assert result(node(gpu(UEID_A)), only_gpu_group + GPU)[2] == [Code.POLICY_GPU_COUNT]


def test_without_gpu_rules_gpus_are_not_appraised_and_the_digest_is_unchanged() -> None:
    assert result(node(None), BASE) == (Verdict.ATTESTED, ("trainers", "gpu-trainers"), [])
    assert result(node(gpu(cc_mode="off")), BASE)[0] is Verdict.ATTESTED
    canonical = parse_policy(BASE + RELEASE.replace("require_gpu_attested = true\n", "")).canonical()
    assert (
        "gpu" not in canonical["appraisal"] and "require_gpu_attested" not in canonical["release"]["rules"][0]
    )


def test_simulated_gpus_follow_simulated_evidence_deny() -> None:
    deny = (BASE + GPU).replace('simulated_evidence = "allow"', 'simulated_evidence = "deny"')
    _, _, codes = result(node(gpu(UEID_A, simulated=True), gpu(UEID_B)), deny)
    assert codes == [Code.POLICY_SIMULATED_EVIDENCE]


def test_release_rule_may_require_gpu_attested_groups() -> None:
    policy = parse_policy(BASE + GPU + RELEASE)
    assert policy.release.rules[0].require_gpu_attested
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + GPU + RELEASE.replace('["gpu-trainers"]', '["trainers"]'))
    assert info.value.code is Code.POLICY_INVALID and "GPU-attested" in info.value.message
    with pytest.raises(PolicyError):
        parse_policy(BASE + RELEASE)  # no [appraisal.gpu]: no GPU-attested group exists


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ('min_driver = "latest"', "appraisal.gpu.min_driver"),
        ('vbios_versions = ["96.00.9f.00.01"]', "appraisal.gpu.vbios_versions[0]"),
        ('architectures = ["AMPERE"]', "appraisal.gpu.architectures[0]"),
        ("min_count = 17", "appraisal.gpu.min_count"),
        ("require_cc_mode = 1", "appraisal.gpu.require_cc_mode"),
        ("cc = true", "appraisal.gpu.cc"),
    ],
)
def test_schema_errors_name_the_key(snippet: str, where: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + "[appraisal.gpu]\n" + snippet + "\n")
    assert info.value.path == where


def test_gpu_group_must_be_a_cpu_group() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(BASE + GPU.replace('name = "gpu-trainers"', 'name = "nowhere"'))
    assert info.value.path == "appraisal.gpu.groups[0].name"


def test_reappraisal_uses_stored_gpu_claims() -> None:
    """Stored claims (as the registry keeps them, JSON) are re-appraised without any GPU evidence."""
    stored = claims_from_dict(json.loads(json.dumps(node(gpu(UEID_A), gpu(UEID_B)).to_dict())))
    assert result(stored)[0] is Verdict.ATTESTED
    stricter = (BASE + GPU).replace('min_driver = "550.54.14"', 'min_driver = "560.0"')
    changes = reappraise(parse_policy(stricter), [("n1", stored, NodeState.ATTESTED.value)], NOW)
    assert [(c.new_state, {r.code for r in c.reasons}) for c in changes] == [
        (NodeState.SUSPENDED, {Code.POLICY_GPU_DRIVER_BELOW_MINIMUM})
    ]
    assert replace(stored, details={**stored.details, "gpus": "x"}) != stored
    assert result(replace(stored, details={**stored.details, "gpus": "x"}))[2][0] is Code.POLICY_CLAIM_INVALID


def test_summary_shows_gpu_rules_and_relaxations() -> None:
    from policies import summarize
    from policies.summary import notes

    relaxed = (BASE + GPU + RELEASE).replace("require_rim_match = true", "require_rim_match = false")
    summary = summarize(parse_policy(relaxed))
    assert (
        summary["gpu"]["min_driver"] == "550.54.14"
        and summary["groups"]["gpu-trainers"]["gpu_min_count"] == 2
    )
    assert summary["release_rules"][0]["require_gpu_attested"] is True
    assert any("not matched against their RIMs" in n for n in notes(parse_policy(relaxed)))
    assert "gpu" not in summarize(parse_policy(BASE))
