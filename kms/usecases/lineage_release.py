"""The lineage of a model key for lineage-restricted releases (``policies.lineage``): which dataset keys
went into it and which groups an approved exception lets read it anyway.

The datasets: every read grant in the lineage (``kms.provenance.lineage.derive``) of every recorded
``model.output`` sealed with the key. The exceptions: ``lineage.exception`` ledger entries, written only
when a second operator approved a ``GrantLineageException``. Read fresh on every release the rule covers
(opt-in, and a cached read could miss an output recorded a moment ago), and again inside the transaction
that commits the grant (``recheck``, run by ``kms.usecases.grants.commit_grants`` with the other premises),
so an output recorded or an exception withdrawn between decision and commit refuses it; a ledger the
lineage cannot be derived from refuses the release.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attestation.coded import Reason
from kms.audit.entry import Entry
from kms.audit.errors import AuditError
from kms.provenance.lineage import LineageInvalid, derive
from kms.sql import Connection
from kms.sql.provenance import lineage_entries, lineage_exception_groups, recorded_outputs
from kms.sql.store import Store
from kms.usecases.grants import Recheck
from policies.errors import Code as PolicyCode
from policies.errors import PolicyError
from policies.lineage import lineage_restriction
from policies.model import Policy, Purpose


@dataclass(frozen=True)
class ModelLineage:
    datasets: frozenset[str]
    excepted_groups: frozenset[str]


class LineageUnknown(Exception):
    """The ledger's entries do not yield the model key's lineage."""


class LineageRestrictions:
    def __init__(self, store: Store) -> None:
        self._store = store

    def lineage(self, key_name: str) -> ModelLineage:
        with self._store.reader() as conn:
            return lineage_in(conn, key_name)

    def check(
        self, policy: Policy, *, rule_name: str, purpose: str, node_groups: frozenset[str], key_name: str
    ) -> Reason | None:
        """The refusal of a release ``rule_name`` granted, or None. Reads the ledger only when the rule
        is lineage-restricted and the purpose is read."""
        if not _restricted(policy, rule_name, purpose):
            return None
        return _refusal(
            policy,
            self.lineage,
            rule_name=rule_name,
            purpose=purpose,
            node_groups=node_groups,
            key_name=key_name,
        )

    def recheck(
        self, policy: Policy, *, rule_name: str, purpose: str, node_groups: frozenset[str], key_name: str
    ) -> Recheck | None:
        """The same check, to run again inside the transaction that commits the grant (on that
        transaction's reads: an output recorded or an exception withdrawn after the decision counts);
        None when the rule is not lineage-restricted for this purpose."""
        if not _restricted(policy, rule_name, purpose):
            return None

        def run(conn: Connection) -> Reason | None:
            return _refusal(
                policy,
                lambda k: lineage_in(conn, k),
                rule_name=rule_name,
                purpose=purpose,
                node_groups=node_groups,
                key_name=key_name,
            )

        return run


def lineage_in(conn: Connection, key_name: str) -> ModelLineage:
    """The key's lineage and exceptions, read on ``conn``; ``LineageUnknown`` if the entries do not
    yield it (entries that do not decode included: a refusal of this release, not of its batch)."""
    try:
        outputs = [Entry.decode(c) for _, c in recorded_outputs(conn, key_name=key_name)]
        node_ids = {str(o.fields.get("node_id")) for o in outputs}
        entries = [Entry.decode(c) for c in lineage_entries(conn, node_ids).values()] if outputs else []
        excepted = lineage_exception_groups(conn, key_name)
    except (AuditError, ValueError, KeyError, TypeError) as err:
        raise LineageUnknown(f"a ledger entry does not decode: {err}") from None
    datasets: set[str] = set()
    for output in outputs:
        try:
            datasets.update(str(d["key"]) for d in derive(entries, output.seq).datasets)
        except LineageInvalid as err:
            raise LineageUnknown(str(err)) from None
    return ModelLineage(frozenset(datasets), frozenset(excepted))


def _restricted(policy: Policy, rule_name: str, purpose: str) -> bool:
    rule = next((r for r in policy.release.rules if r.name == rule_name), None)
    return rule is not None and rule.lineage_restricted and purpose == Purpose.READ.value


def _refusal(
    policy: Policy,
    read: Callable[[str], ModelLineage],
    *,
    rule_name: str,
    purpose: str,
    node_groups: frozenset[str],
    key_name: str,
) -> Reason | None:
    try:
        lineage = read(key_name)
    except LineageUnknown as err:
        return Reason(
            PolicyCode.RELEASE_LINEAGE_RESTRICTED.value,
            f"the lineage of {key_name} cannot be derived from the ledger: {err}",
            "check the ledger: sovereign audit verify",
        )
    found = lineage_restriction(
        policy,
        rule_name=rule_name,
        purpose=purpose,
        node_groups=node_groups,
        key_name=key_name,
        datasets=lineage.datasets,
        excepted_groups=lineage.excepted_groups,
    )
    if found is None:
        return None
    coded = PolicyError(found.message, code=found.code)  # with the code's default hint
    return Reason(found.code.value, found.message, coded.hint)
