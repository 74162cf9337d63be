"""Control-plane state on PostgreSQL shared by replicas (one ``Store`` per replica, one database):
nonces are spent exactly once, node changes never lose an update, and a release request id is granted
at most once, whichever replica serves it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import func, select

from attestation.coded import Reason
from kms.clock import ManualClock
from kms.domain.catalogue import KeyKind, KeyRecord, KeyState, KeyVersion
from kms.domain.registry import NodeChange, NodeRecord, NodeState
from kms.errors import Code, KmsError
from kms.sql import open_store
from kms.sql.control_schema import release_requests
from kms.sql.decisions import GrantRow, PendingGrant
from kms.sql.keys import SqlKeyStore
from kms.sql.nodes import SqlNodes
from kms.sql.policy_versions import PolicyRow, SqlPolicies
from kms.sql.store import Store
from kms.usecases.grants import commit_grants
from kms.usecases.nonces import Nonces

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
LEASE = NOW + timedelta(minutes=5)
T = TypeVar("T")


def replicas(url: str, count: int = 2) -> list[Store]:
    return [open_store(url) for _ in range(count)]


def race(count: int, fn: Callable[[int], T]) -> list[T | KmsError]:
    """Run fn(0..count-1) on as many threads released together; each result or its KmsError."""
    barrier = threading.Barrier(count)
    out: list[T | KmsError] = [KmsError("did not run")] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except KmsError as err:
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def node(node_id: str) -> NodeRecord:
    return NodeRecord(
        node_id=node_id, node_name="n", state=NodeState.ATTESTED, tee="snp", kem_suite=bytes(6),
        kem_public=bytes(32), signing_public=node_id.encode().ljust(32, b"\0"), claims={"a": [1, "b"]},
        claims_digest="d" * 64, groups=("trainers",), requested_groups=("trainers",),
        reasons=(Reason("X", "m"),), evidence_time=NOW, lease_id="l-1", lease_issued_at=NOW,
        lease_expires_at=LEASE, policy_version=1, registered_at=NOW, attested_at=NOW, state_changed_at=NOW,
    )  # fmt: skip


def test_a_nonce_issued_by_one_replica_is_spent_once_across_all(postgres_url: str) -> None:
    clock = ManualClock(NOW)
    a, b, c = (Nonces(s, clock) for s in replicas(postgres_url, 3))
    challenge = a.issue("node-a")
    b.consume(challenge.nonce, "node-a")  # served by another replica
    for other in (a, b, c):
        with pytest.raises(KmsError) as info:
            other.consume(challenge.nonce, "node-a")
        assert info.value.code is Code.NONCE_REPLAYED


def test_concurrent_presentations_of_one_nonce_succeed_exactly_once(postgres_url: str) -> None:
    clock = ManualClock(NOW)
    nonces = [Nonces(s, clock) for s in replicas(postgres_url, 3)]
    for _round in range(3):
        nonce = nonces[0].issue("node-a").nonce

        def present(i: int, nonce: bytes = nonce) -> None:
            nonces[i % 3].consume(nonce, "node-a")

        results = race(9, present)
        assert sum(r is None for r in results) == 1, results
        assert {r.code for r in results if isinstance(r, KmsError)} == {Code.NONCE_REPLAYED}


def test_expired_and_mismatched_nonces_are_spent_on_any_replica(postgres_url: str) -> None:
    clock = ManualClock(NOW)
    a, b = (Nonces(s, clock) for s in replicas(postgres_url))
    first, second = a.issue("node-a"), a.issue("node-a")
    with pytest.raises(KmsError) as info:
        b.consume(first.nonce, "node-b")
    assert info.value.code is Code.NONCE_NAME_MISMATCH
    clock.advance(61)
    with pytest.raises(KmsError) as info:
        b.consume(second.nonce, "node-a")
    assert info.value.code is Code.NONCE_EXPIRED
    clock.advance(60)
    a.issue("node-c")  # purges rows expired one lifetime ago, for every replica
    with pytest.raises(KmsError) as info:
        b.consume(first.nonce, "node-a")
    assert info.value.code is Code.NONCE_UNKNOWN


def test_node_registered_on_one_replica_reads_back_identically_on_another(postgres_url: str) -> None:
    a, b = (SqlNodes(s) for s in replicas(postgres_url))
    record = node("n-1")
    a.insert(record)
    assert b.get("n-1") == record
    with pytest.raises(KmsError) as info:
        b.insert(node("n-1"))
    assert info.value.code is Code.NODE_KEYS_IN_USE
    assert [n.node_id for n in b.list([NodeState.ATTESTED], 0, 10)] == ["n-1"]


def test_node_changes_from_two_replicas_never_lose_an_update(postgres_url: str) -> None:
    stores = replicas(postgres_url)
    SqlNodes(stores[0]).insert(node("n-1"))
    nodes = [SqlNodes(s) for s in stores]

    def bump(current: NodeRecord) -> NodeChange:  # read-check-write
        return NodeChange(current.state, current.reasons, policy_version=current.policy_version + 1)

    results: list[NodeRecord | KmsError] = race(16, lambda i: nodes[i % 2].apply("n-1", bump))
    assert not [r for r in results if isinstance(r, KmsError)]
    final = nodes[1].get("n-1")
    assert final is not None and final.policy_version == 17


def _seed_release(store: Store) -> None:
    SqlNodes(store).insert(node("n-1"))
    SqlKeyStore(store).insert(
        KeyRecord("dataset/a", KeyKind.DATASET, KeyState.ACTIVE, 1, NOW, NOW, None,
                  (KeyVersion(1, "vault:v1:x", 1, NOW),))
    )  # fmt: skip
    with store.transaction() as conn:
        SqlPolicies(store).append(conn, PolicyRow(1, "schema = 1", "0" * 64, NOW, "test"))


def pending(request_id: bytes) -> PendingGrant:
    row = GrantRow(NOW, "n-1", "dataset/a", 1, "read", request_id, "bao-req-1", LEASE, 1, "rule")
    return PendingGrant(row, "l-1", NOW + timedelta(seconds=120))


def commit(store: Store, items: list[PendingGrant]) -> list[int | Reason]:
    with store.transaction() as conn:
        return commit_grants(conn, items, NOW)


def test_a_request_id_is_granted_once_whichever_replicas_see_it(postgres_url: str) -> None:
    stores = replicas(postgres_url)
    _seed_release(stores[0])
    results = race(8, lambda i: commit(stores[i % 2], [pending(b"\x07" * 16)])[0])
    granted = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, Reason)]
    assert len(granted) == 1 and len(refused) == 7, results
    assert {r.code for r in refused} == {Code.REQUEST_REPLAYED.value}
    with stores[1].reader() as conn:
        assert conn.execute(select(func.count()).select_from(release_requests)).scalar() == 1


def test_grant_sequences_from_two_replicas_are_distinct_and_increase(postgres_url: str) -> None:
    stores = replicas(postgres_url)
    _seed_release(stores[0])
    results = race(
        10, lambda i: commit(stores[i % 2], [pending(bytes([i, 1]) * 8), pending(bytes([i, 2]) * 8)])
    )
    sequences = [s for r in results if isinstance(r, list) for s in r]
    assert all(isinstance(s, int) for s in sequences), results
    assert len(set(sequences)) == 20
    for batch in results:
        assert isinstance(batch, list) and batch == sorted(batch)  # type: ignore[type-var]
