"""The set-based re-appraisal of a policy change (``kms.usecases.reappraisal``: claims read in pages, each
node appraised once, changes written in batches) against the node-by-node path it replaced (every record
loaded, ``policies.reappraise`` then a second appraisal for narrowing, one UPDATE per changed node; kept
below as the reference), on two real SQLite registries filled alike with a few thousand nodes in every
state. Both must find the same changes in the same order (the ledger entries are built from them) and
leave the same rows."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from node_fakes import MEASUREMENT, NOW, OTHER_MEASUREMENT, POLICY, claims
from sqlalchemy import insert, select

from attestation.coded import Reason
from kms.domain.registry import (
    NodeRecord,
    NodeState,
    claims_digest,
    from_policy_state,
    operator_suspended,
    policy_state,
    policy_suspended,
    reappraised,
    reasons_from,
)
from kms.errors import Code
from kms.sql import open_store
from kms.sql.control_schema import nodes
from kms.sql.nodes import apply_change, from_row, to_row
from kms.sql.store import Store
from kms.usecases.attest import granted_groups
from kms.usecases.reappraisal import reappraise_stored, write_changes
from policies import Change, appraise, claims_from_dict, parse_policy, reappraise
from policies import NodeState as PolicyNodeState
from policies.errors import Code as PolicyCode
from policies.errors import Reason as PolicyReason

COUNT = 2000
GROUPS = ("trainers", "evaluators")
# trainers move to the other image, evaluators stay; no operator approval (pending nodes may attest)
MOVED = POLICY.replace(f'name = "trainers"\nmeasurements = ["{MEASUREMENT.hex()}"]',
                       f'name = "trainers"\nmeasurements = ["{OTHER_MEASUREMENT.hex()}"]')  # fmt: skip
# a higher minimum SNP firmware: nodes below it fail; approval required again
STRICTER = POLICY.replace("snp = 8", "snp = 9").replace(
    "[appraisal]\n", "[appraisal]\nrequire_operator_approval = true\n"
)
# both images in both groups: suspended nodes whose claims pass come back
WIDER = POLICY.replace(f'measurements = ["{MEASUREMENT.hex()}"]',
                       f'measurements = ["{MEASUREMENT.hex()}", "{OTHER_MEASUREMENT.hex()}"]')  # fmt: skip


def registry(rng: random.Random) -> list[NodeRecord]:
    """``COUNT`` nodes in every state, two images, two firmware levels, mixed groups; some share a
    registration time (the order then falls to the node id)."""
    out = []
    for i in range(COUNT):
        image = rng.choice((MEASUREMENT, OTHER_MEASUREMENT))
        tcb = {
            "bootloader": 3,
            "tee": 0,
            "snp": rng.choice((8, 9)),
            "microcode": 115,
            "raw": "0300000000000873",
        }
        node_claims = claims(rng.randbytes(64), measurement=image, tcb=tcb).to_dict()
        state = rng.choice(list(NodeState))
        reasons: tuple[Reason, ...] = ()
        if state is NodeState.SUSPENDED:
            code = rng.choice((Code.NODE_SUSPENDED_BY_OPERATOR, Code.NODE_SUSPENDED_BY_POLICY))
            reasons = (Reason(code.value, "held", ""),)
        requested = tuple(g for g in GROUPS if rng.random() < 0.7)
        groups = requested if state is NodeState.ATTESTED else ()
        at = NOW + timedelta(seconds=i // 3)
        out.append(
            NodeRecord(
                node_id=f"n-{rng.getrandbits(64):016x}",
                node_name=f"node-{i}",
                state=state,
                tee="snp",
                kem_suite=b"\x00\x20\x00\x01\x00\x03",
                kem_public=rng.randbytes(32),
                signing_public=rng.randbytes(32),
                claims=node_claims,
                claims_digest=claims_digest(node_claims),
                groups=groups,
                requested_groups=requested,
                reasons=reasons,
                evidence_time=at,
                lease_id=None,
                lease_issued_at=None,
                lease_expires_at=None,
                policy_version=1,
                registered_at=at,
                attested_at=at,
                state_changed_at=at,
            )
        )
    return out


def filled(path: Path, records: list[NodeRecord]) -> Store:
    store = open_store(path)
    with store.transaction() as conn:
        conn.execute(insert(nodes), [to_row(r) for r in records])
    return store


def rows(store: Store) -> list[tuple[Any, ...]]:
    with store.reader() as conn:
        return [tuple(r) for r in conn.execute(select(nodes).order_by(nodes.c.node_id))]


# -- the node-by-node path, as kms.usecases.admin ran it before (the reference) ----------------------


def reference(store: Store, policy: Any) -> tuple[int, list[Change]]:
    now = NOW + timedelta(days=1)
    with store.transaction() as conn:
        loaded = [
            from_row(r) for r in conn.execute(select(nodes).order_by(nodes.c.registered_at, nodes.c.node_id))
        ]
        live = [n for n in loaded if n.state is not NodeState.REVOKED]
        inputs = [(n.node_id, claims_from_dict(dict(n.claims)), policy_state(n.state).value) for n in live]
        by_id = {n.node_id: n for n in live}
        changes = []
        for change in reappraise(policy, inputs, now):
            node = by_id[change.node_id]
            if operator_suspended(node) and not demotion(change):
                continue
            changes.append(
                dataclasses.replace(change, groups=granted_groups(node.requested_groups, change.groups))
            )
        changed = {c.node_id for c in changes}
        changes += [
            narrowed
            for n in live
            if n.state is NodeState.ATTESTED and n.node_id not in changed
            for narrowed in [ref_narrowed(policy, n, now)]
            if narrowed is not None
        ]
        for change in changes:
            node = by_id[change.node_id]
            reasons = reasons_from(change.reasons)
            if demotion(change):
                step = policy_suspended(node, reasons, now)
            else:
                step = reappraised(node, from_policy_state(change.new_state), change.groups, reasons, now)
            apply_change(conn, change.node_id, step)
    return len(live), changes


def ref_narrowed(policy: Any, node: NodeRecord, now: Any) -> Change | None:
    eligible = appraise(policy, claims_from_dict(dict(node.claims)), now=now).groups
    kept = tuple(g for g in node.groups if g in eligible)
    if kept == node.groups:
        return None
    if kept:
        return Change(node.node_id, PolicyNodeState.ATTESTED, PolicyNodeState.ATTESTED, kept, ())
    why = PolicyReason(
        PolicyCode.POLICY_MEASUREMENT_NOT_ALLOWED,
        f"its image is in none of its groups [{', '.join(node.groups)}] under the new policy "
        f"(it matches [{', '.join(eligible)}])",
    )
    return Change(node.node_id, PolicyNodeState.ATTESTED, PolicyNodeState.SUSPENDED, (), (why,))


def demotion(change: Change) -> bool:
    return change.new_state.value in ("SUSPENDED", "REJECTED")


# -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seed"), [(MOVED, 1), (STRICTER, 2), (WIDER, 3)], ids=["moved", "stricter", "wider"]
)
def test_batched_reappraisal_matches_the_node_by_node_path(tmp_path: Path, text: str, seed: int) -> None:
    policy = parse_policy(text, "test")
    records = registry(random.Random(seed))
    ours, theirs = filled(tmp_path / "ours.db", records), filled(tmp_path / "ref.db", records)
    assert rows(ours) == rows(theirs)
    now = NOW + timedelta(days=1)
    with ours.transaction() as conn:  # small pages, so page and batch boundaries fall inside the registry
        found = reappraise_stored(conn, policy, now, page=97)
        write_changes(conn, found.changes, now, page=89)
    checked, expected = reference(theirs, policy)

    assert found.checked == checked == sum(r.state is not NodeState.REVOKED for r in records)
    assert list(found.changes) == expected
    assert rows(ours) == rows(theirs)
    assert rows(ours) != [tuple(r) for r in rows(filled(tmp_path / "before.db", records))]
    kinds = {(c.old_state.value, c.new_state.value, bool(c.groups)) for c in expected}
    assert len(expected) > COUNT // 10 and len(kinds) >= 2, kinds  # not a vacuous comparison


def test_dry_run_reads_the_same_changes_and_writes_nothing(tmp_path: Path) -> None:
    policy = parse_policy(STRICTER, "test")
    records = registry(random.Random(4))
    store = filled(tmp_path / "db", records)
    before = rows(store)
    now = NOW + timedelta(days=1)
    with store.reader() as conn:
        read = reappraise_stored(conn, policy, now, page=50)
    with store.transaction() as conn:
        again = reappraise_stored(conn, policy, now)
    assert read == again and read.changes and rows(store) == before
