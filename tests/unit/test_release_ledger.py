"""Grant recording on a real SQLite file: a batch re-checks every premise inside its transaction
(replayed request id, node revoked or lease replaced, key disabled, policy changed, WRITE after a
rotation) and appends grants with strictly increasing audit sequences."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attestation.coded import Reason
from kms.domain.catalogue import KeyKind, KeyRecord, KeyState, KeyVersion, require_not_destroyed
from kms.domain.registry import NodeRecord, NodeState, revoke
from kms.domain.transit import WrappedKey
from kms.sql import open_store
from kms.sql.decisions import GrantRow, PendingGrant
from kms.sql.keys import SqlKeyStore
from kms.sql.nodes import SqlNodes
from kms.sql.policy_versions import PolicyRow, SqlPolicies
from kms.sql.store import Store
from kms.usecases.grants import commit_grants

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
LEASE = NOW + timedelta(minutes=5)


def node(node_id: str, state: NodeState = NodeState.ATTESTED, lease_id: str = "l-1") -> NodeRecord:
    return NodeRecord(
        node_id=node_id, node_name="n", state=state, tee="snp", kem_suite=bytes(6), kem_public=bytes(32),
        signing_public=node_id.encode().ljust(32, b"\0"), claims={}, claims_digest="", groups=("trainers",),
        requested_groups=(), reasons=(), evidence_time=NOW, lease_id=lease_id, lease_issued_at=NOW,
        lease_expires_at=LEASE, policy_version=1, registered_at=NOW, attested_at=NOW, state_changed_at=NOW,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = open_store(tmp_path / "db.sqlite")
    nodes = SqlNodes(store)
    nodes.insert(node("n-1"))
    nodes.insert(node("n-2"))
    keys = SqlKeyStore(store)
    for name, kind in (("dataset/a", KeyKind.DATASET), ("model/m", KeyKind.MODEL)):
        keys.insert(
            KeyRecord(name, kind, KeyState.ACTIVE, 1, NOW, NOW, None, (KeyVersion(1, "vault:v1:x", 1, NOW),))
        )
    with store.transaction() as conn:
        SqlPolicies(store).append(conn, PolicyRow(1, "schema = 1", "0" * 64, NOW, "test"))
    return store


def pending(node_id: str = "n-1", request_id: bytes = b"\x01" * 16, *, key: str = "dataset/a",
            purpose: str = "read", version: int = 1, lease_id: str = "l-1", policy: int = 1) -> PendingGrant:  # fmt: skip
    row = GrantRow(NOW, node_id, key, version, purpose, request_id, "bao-req-1", LEASE, policy, "rule")
    return PendingGrant(row, lease_id, NOW + timedelta(seconds=120))


def commit(store: Store, items: list[PendingGrant]) -> list[int | Reason]:
    with store.transaction() as conn:
        return commit_grants(conn, items, NOW)


def codes(results: list[int | Reason]) -> list[str | None]:
    return [r.code if isinstance(r, Reason) else None for r in results]


def grant_rows(store: Store) -> int:
    path = store.engine.url.database
    assert path is not None
    return int(sqlite3.connect(path).execute("SELECT count(*) FROM grants").fetchone()[0])


def test_grants_get_increasing_sequences(store: Store) -> None:
    results = commit(store, [pending(request_id=bytes([i]) * 16) for i in range(5)])
    assert all(isinstance(r, int) for r in results)
    assert results == sorted(results) and len(set(results)) == 5
    later = commit(store, [pending(request_id=b"\x09" * 16)])
    assert later[0] > results[-1]  # type: ignore[operator]


def test_replay_within_a_batch_and_across_batches(store: Store) -> None:
    assert codes(commit(store, [pending(), pending()])) == [None, "REQUEST_REPLAYED"]
    assert codes(commit(store, [pending()])) == ["REQUEST_REPLAYED"]
    assert codes(commit(store, [pending(node_id="n-2")])) == [None]  # ids are per node
    assert grant_rows(store) == 2


def test_revoked_node_and_replaced_lease(store: Store) -> None:
    SqlNodes(store).apply("n-1", lambda n: revoke(n, "test", NOW))
    assert codes(commit(store, [pending()])) == ["RELEASE_NODE_NOT_ATTESTED"]
    assert codes(commit(store, [pending("n-2", lease_id="l-old")])) == ["RELEASE_NODE_CHANGED"]
    assert codes(commit(store, [pending("n-9")])) == ["RELEASE_NODE_NOT_ATTESTED"]
    assert grant_rows(store) == 0


def test_key_state_policy_version_and_write_after_rotation(store: Store) -> None:
    keys = SqlKeyStore(store)
    keys.set_state("dataset/a", KeyState.DISABLED, NOW, require_not_destroyed)
    assert codes(commit(store, [pending()])) == ["KEY_DISABLED"]
    assert codes(commit(store, [pending(key="dataset/none")])) == ["KEY_NOT_FOUND"]
    assert codes(commit(store, [pending(key="model/m", policy=2, request_id=b"\x02" * 16)])) == [
        "RELEASE_POLICY_CHANGED"
    ]
    keys.add_version("model/m", WrappedKey("vault:v1:y", 1), NOW, require_not_destroyed)
    write_v1 = pending(key="model/m", purpose="write", request_id=b"\x03" * 16)
    read_v1 = pending(key="model/m", purpose="read", request_id=b"\x04" * 16)
    assert codes(commit(store, [write_v1, read_v1])) == ["RELEASE_VERSION_NOT_WRITABLE", None]
    assert grant_rows(store) == 1
