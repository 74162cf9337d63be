"""Release decisions: may this node, in these groups, have this key for this purpose, now?

Every check runs and every failure is returned. A grant comes from the first rule, in document order,
that covers one of the node's groups, the key, the purpose and the evidence's age; its lease is cut to
what remains of the node's own lease.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kms.envelope.names import KEY_NAME_RULE, is_valid_key_name
from policies.appraise import require_aware
from policies.errors import Code, Reason
from policies.model import NodeState, Policy, Purpose, ReleaseRule

# Evidence time is the control plane's clock at registration; replicas may disagree by a little.
CLOCK_SKEW = timedelta(seconds=5)


@dataclass(frozen=True)
class ReleaseDecision:
    allowed: bool
    reasons: tuple[Reason, ...]  # empty when allowed
    lease_seconds: int  # 0 when denied
    rule: str | None  # the granting rule's name
    policy_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reasons": [x.to_dict() for x in self.reasons],
            "lease_seconds": self.lease_seconds,
            "rule": self.rule,
            "policy_digest": self.policy_digest,
        }


def _state_reasons(node_state: str, lease_left: timedelta | None) -> list[Reason]:
    reasons = []
    if node_state != NodeState.ATTESTED.value:
        reasons.append(
            Reason(Code.RELEASE_NODE_NOT_ATTESTED, f"node state is {node_state!s:.40}, not ATTESTED")
        )
    if lease_left is None:
        reasons.append(Reason(Code.RELEASE_LEASE_EXPIRED, "the node holds no attestation lease"))
    elif lease_left < timedelta(seconds=1):
        reasons.append(
            Reason(Code.RELEASE_LEASE_EXPIRED, "the node's attestation lease has expired; re-attest")
        )
    return reasons


def _grant(
    rules: Iterable[ReleaseRule], groups: frozenset[str], key_name: str, purpose: Purpose, age: timedelta
) -> ReleaseRule | Reason:
    covering = [x for x in rules if x.groups & groups and x.matches_key(key_name)]
    if not covering:
        listed = ", ".join(sorted(groups)) or "none"
        return Reason(Code.RELEASE_NO_RULE, f"no release rule grants key {key_name!r} to groups [{listed}]")
    for_purpose = [x for x in covering if purpose in x.purposes]
    if not for_purpose:
        names = ", ".join(x.name for x in covering)
        return Reason(
            Code.RELEASE_PURPOSE_NOT_ALLOWED,
            f"rules [{names}] cover key {key_name!r} but not for {purpose.value}",
        )
    fresh = [x for x in for_purpose if age <= timedelta(seconds=x.max_evidence_age)]
    if not fresh:
        limit = max(x.max_evidence_age for x in for_purpose)
        return Reason(
            Code.RELEASE_EVIDENCE_TOO_OLD,
            f"evidence is {int(age.total_seconds())} s old; the rules allow at most {limit} s; re-attest",
        )
    return fresh[0]


def decide_release(
    policy: Policy,
    *,
    node_groups: Iterable[str],
    node_state: str,
    key_name: str,
    purpose: str,
    lease_expires_at: datetime | None,
    evidence_time: datetime,
    now: datetime,
) -> ReleaseDecision:
    """Decide one release. Raises only for naive datetimes (TIME_INVALID); every denial is a reason."""
    require_aware(now, "now")
    require_aware(evidence_time, "evidence_time")
    if lease_expires_at is not None:
        require_aware(lease_expires_at, "lease_expires_at")
    groups = frozenset([node_groups] if isinstance(node_groups, str) else node_groups)
    lease_left = lease_expires_at - now if lease_expires_at is not None else None
    reasons = _state_reasons(str(node_state), lease_left)
    age = now - evidence_time
    grant: ReleaseRule | Reason | None = None
    if not is_valid_key_name(key_name):
        reasons.append(Reason(Code.RELEASE_KEY_NAME_INVALID, f"{key_name!r:.80} is not {KEY_NAME_RULE}"))
    elif purpose not in {p.value for p in Purpose}:
        reasons.append(Reason(Code.RELEASE_PURPOSE_NOT_ALLOWED, f"{purpose!r:.40} is not read or write"))
    elif age < -CLOCK_SKEW:
        reasons.append(Reason(Code.RELEASE_EVIDENCE_TIME_INVALID, "evidence time is in the future"))
    else:
        grant = _grant(policy.release.rules, groups, key_name, Purpose(purpose), max(age, timedelta(0)))
        if isinstance(grant, Reason):
            reasons.append(grant)
    if reasons or not isinstance(grant, ReleaseRule) or lease_left is None:
        return ReleaseDecision(False, tuple(reasons), 0, None, policy.digest)
    lease = min(grant.lease_seconds, int(lease_left.total_seconds()))
    return ReleaseDecision(True, (), lease, grant.name, policy.digest)
