"""Lineage-restricted releases: a model key carries the read restrictions of the datasets it was trained on.

Opt-in per release rule (``lineage_restricted = true``). When such a rule grants a model key for ``read``,
every dataset key that went into the model (the read grants in the lineage of its recorded outputs) must
be readable by one of the node's groups under the same policy; otherwise the release is refused with
``RELEASE_LINEAGE_RESTRICTED``, unless an approved exception names the model key and one of the node's
groups. Pure: the datasets and the exceptions are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable

from policies.errors import Code, Reason
from policies.model import Policy, Purpose

MAX_LISTED = 5


def readable(policy: Policy, groups: frozenset[str], key_name: str) -> bool:
    """Whether some release rule grants ``key_name`` for read to one of ``groups`` (evidence age aside:
    that is the node's freshness, not the group's entitlement)."""
    return any(
        r.groups & groups and r.matches_key(key_name) and Purpose.READ in r.purposes
        for r in policy.release.rules
    )


def lineage_restriction(
    policy: Policy,
    *,
    rule_name: str,
    purpose: str,
    node_groups: Iterable[str],
    key_name: str,
    datasets: Iterable[str],
    excepted_groups: Iterable[str],
) -> Reason | None:
    """The refusal of a release the rule ``rule_name`` granted, or None when the lineage allows it."""
    rule = next((r for r in policy.release.rules if r.name == rule_name), None)
    if rule is None or not rule.lineage_restricted or purpose != Purpose.READ.value:
        return None
    groups = frozenset([node_groups] if isinstance(node_groups, str) else node_groups)
    if groups & frozenset(excepted_groups):
        return None
    barred = sorted({d for d in datasets if not readable(policy, groups, d)})
    if not barred:
        return None
    listed = ", ".join(barred[:MAX_LISTED]) + (
        f" and {len(barred) - MAX_LISTED} more" if len(barred) > MAX_LISTED else ""
    )
    return Reason(
        Code.RELEASE_LINEAGE_RESTRICTED,
        f"{key_name} was trained on datasets groups [{', '.join(sorted(groups)) or 'none'}] may not read: {listed}",
    )
