"""Appraisal: verified claims + policy -> verdict, node groups and every failing rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attestation.claims import Claims, Tee
from policies import rules as r
from policies.errors import Code, PolicyError, Reason
from policies.gpu_rules import InSomeGpuGroup, gpu_rules
from policies.model import OnFailure, Policy, Simulated, SnpRules, TdxRules, Verdict


@dataclass(frozen=True)
class Appraisal:
    verdict: Verdict
    groups: tuple[str, ...]  # empty unless the verdict is ATTESTED or PENDING_APPROVAL
    reasons: tuple[Reason, ...]  # every failing rule; for PENDING_APPROVAL, why it waits
    warnings: tuple[Reason, ...]  # failures the policy downgrades to warnings
    policy_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "groups": list(self.groups),
            "reasons": [x.to_dict() for x in self.reasons],
            "warnings": [x.to_dict() for x in self.warnings],
            "policy_digest": self.policy_digest,
        }


def require_aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise PolicyError(f"{name} must be a timezone-aware datetime, got {value!r}", code=Code.TIME_INVALID)
    return value


def _snp_rules(p: SnpRules) -> list[r.Rule]:
    rules: list[r.Rule] = [r.ProductIn(p.products), r.MinimumTcb(p.min_tcb)]
    if p.forbid_debug:
        rules.append(r.NoDebug())
    if not p.allow_smt:
        rules.append(r.PolicyBitClear("smt_allowed", Code.POLICY_SMT_FORBIDDEN, "SMT"))
    if p.forbid_migration_agent:
        rules.append(
            r.PolicyBitClear(
                "migration_agent_allowed", Code.POLICY_MIGRATION_AGENT_FORBIDDEN, "a migration agent"
            )
        )
    if p.require_single_socket:
        rules.append(r.SingleSocket())
    rules += [r.MaxVmpl(p.max_vmpl), r.SigningKeyIn(p.signing_keys), r.InSomeGroup(p.groups)]
    return rules


def _tdx_rules(p: TdxRules) -> list[r.Rule]:
    rules: list[r.Rule] = [r.TcbStatusIn(p.tcb_statuses)]
    if p.forbid_debug:
        rules.append(r.NoDebug())
    if p.forbidden_advisories:
        rules.append(r.NoForbiddenAdvisories(p.forbidden_advisories))
    if p.mrseam is not None:
        rules.append(r.MrseamIn(p.mrseam))
    rules.append(r.InSomeGroup(p.groups))
    return rules


def rules_for(policy: Policy, tee: Tee) -> list[r.Rule]:
    """Every rule the policy applies to evidence from ``tee``."""
    a = policy.appraisal
    rules: list[r.Rule] = []
    if a.simulated_evidence is Simulated.DENY:
        rules.append(r.NotSimulated())
    collateral: r.Rule = r.CollateralFresh()
    rules.append(r.Warn(collateral) if a.collateral_expired is OnFailure.WARN else collateral)
    revocation: r.Rule = r.RevocationChecked()
    rules.append(r.Warn(revocation) if a.unchecked_revocation is OnFailure.WARN else revocation)
    if tee is Tee.SNP:
        rules += _snp_rules(a.snp) if a.snp is not None else [r.TeeNotAllowed()]
    else:
        rules += _tdx_rules(a.tdx) if a.tdx is not None else [r.TeeNotAllowed()]
    if a.gpu is not None:
        rules += gpu_rules(a.gpu, deny_simulated=a.simulated_evidence is Simulated.DENY)
        rules = [InSomeGpuGroup(x, a.gpu) if isinstance(x, r.InSomeGroup) else x for x in rules]
    return rules


def appraise(policy: Policy, claims: Claims, *, now: datetime) -> Appraisal:
    """Appraise verified claims. Never raises for claims that fail: every failure is a reason."""
    require_aware(now, "now")
    if not isinstance(claims, Claims) or not isinstance(claims.tee, Tee):
        raise PolicyError(f"expected verified Claims, got {type(claims).__name__}", code=Code.CLAIMS_INVALID)
    rules = rules_for(policy, claims.tee)
    failures, warnings = r.evaluate(rules, claims, now)
    groups: tuple[str, ...] = ()
    if failures:
        verdict = Verdict.REJECTED
    else:
        groups = next(rule for rule in rules if isinstance(rule, r.InSomeGroup | InSomeGpuGroup)).match(
            claims
        )[0]
        if policy.appraisal.require_operator_approval:
            verdict = Verdict.PENDING_APPROVAL
            failures = [
                Reason(Code.POLICY_OPERATOR_APPROVAL_REQUIRED, "the policy requires an operator's approval")
            ]
        else:
            verdict = Verdict.ATTESTED
    return Appraisal(verdict, groups, tuple(failures), tuple(warnings), policy.digest)
