"""A readable summary of a policy and the choices in it that weaken it (for ``sovereign policy check``)."""

from __future__ import annotations

from typing import Any

from attestation.claims import TcbStatus
from policies.model import OnFailure, Policy, Simulated


def notes(policy: Policy) -> list[str]:
    """Deliberate relaxations an operator should see; none of them is an error."""
    a = policy.appraisal
    out = []
    if a.simulated_evidence is Simulated.ALLOW:
        out.append("simulated evidence is allowed: never use this policy in production")
    if a.collateral_expired is OnFailure.WARN:
        out.append("expired collateral only warns")
    if a.unchecked_revocation is OnFailure.WARN:
        out.append("evidence verified without a current CRL (revocation not checked) only warns")
    if a.snp is not None:
        if not a.snp.forbid_debug:
            out.append("SNP guests that allow debugging are accepted")
        if not a.snp.forbid_migration_agent:
            out.append("SNP guests that allow a migration agent are accepted")
        if a.snp.max_vmpl > 0:
            out.append(f"SNP reports from VMPL up to {a.snp.max_vmpl} are accepted")
    if a.tdx is not None:
        if not a.tdx.forbid_debug:
            out.append("TDX guests with the DEBUG attribute are accepted")
        if TcbStatus.UNKNOWN in a.tdx.tcb_statuses:
            out.append("TDX status Unknown is accepted: quotes checked without Intel TCB info pass")
        for group in a.tdx.groups:
            for k, image in enumerate(group.images):
                loose = [f"RTMR{i}" for i, v in enumerate(image.rtmrs) if v is None]
                if loose:
                    out.append(f"TDX group {group.name!r} image {k} does not pin {', '.join(loose)}")
    if a.gpu is not None:
        if not a.gpu.require_rim_match:
            out.append("GPUs whose measurements were not matched against their RIMs are accepted")
        if not a.gpu.require_cc_mode:
            out.append("GPUs outside confidential-computing mode are accepted")
    if a.snp is None and a.tdx is None:
        out.append("no TEE section: every node is rejected")
    elif not policy.groups():
        out.append("no node groups: every node is rejected until you add [[appraisal.*.groups]]")
    if not policy.release.rules:
        out.append("no release rules: no key is ever released")
    return out


def summarize(policy: Policy) -> dict[str, Any]:
    a = policy.appraisal
    groups: dict[str, dict[str, int]] = {}
    if a.snp is not None:
        for g in a.snp.groups:
            groups.setdefault(g.name, {})["snp_measurements"] = len(g.measurements)
    if a.tdx is not None:
        for t in a.tdx.groups:
            groups.setdefault(t.name, {})["tdx_images"] = len(t.images)
    if a.gpu is not None:
        for gg in a.gpu.groups:
            groups.setdefault(gg.name, {})["gpu_min_count"] = gg.min_count
    out: dict[str, Any] = {
        "source": policy.source,
        "schema": policy.version,
        "digest": policy.digest,
        "tees": [name for name, section in (("snp", a.snp), ("tdx", a.tdx)) if section is not None],
        "groups": groups,
        "require_operator_approval": a.require_operator_approval,
        "release_rules": [
            {
                "name": r.name,
                "groups": sorted(r.groups),
                "keys": list(r.keys),
                "purposes": sorted(p.value for p in r.purposes),
                "lease_seconds": r.lease_seconds,
                "max_evidence_age": r.max_evidence_age,
                **({"require_gpu_attested": True} if r.require_gpu_attested else {}),
                **({"lineage_restricted": True} if r.lineage_restricted else {}),
            }
            for r in policy.release.rules
        ],
        "notes": notes(policy),
    }
    if a.gpu is not None:
        out["gpu"] = {
            "min_count": a.gpu.min_count,
            "architectures": sorted(a.gpu.architectures),
            "min_driver": ".".join(str(p) for p in a.gpu.min_driver) if a.gpu.min_driver else None,
            "vbios_versions": sorted(a.gpu.vbios_versions) if a.gpu.vbios_versions is not None else None,
        }
    return out
