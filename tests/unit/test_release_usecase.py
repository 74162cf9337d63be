"""The KeyRelease use case as production runs it, with small fakes at its ports: OpenBao transit is a
fake that hands out fixed keys (and can change the world between the decision and the commit), the
clock is a ManualClock, and the repository is a real SQLite file. Covers the grant, every denial code
of the release path (recorded or not), the retry after a lease change, changes between the decision
and the commit, replays, the client-certificate check and the metrics."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import update

from enclave.identity import NodeIdentity
from kms.clock import ManualClock
from kms.domain.catalogue import Catalogue, KeyKind, KeyRecord, KeyState, KeyVersion
from kms.domain.premises import Grant, KeyStanding, NodeStanding, Snapshot, check_premises
from kms.domain.registry import NodeRecord, NodeState
from kms.domain.transit import Unwrapped
from kms.envelope import open_sealed_key
from kms.errors import Code, KmsError, OpenBaoError
from kms.server.codec import release_in
from kms.sql import open_store
from kms.sql.control_schema import nodes
from kms.sql.group_commit import GroupCommit
from kms.sql.keys import SqlKeyStore
from kms.sql.nodes import SqlNodes
from kms.sql.policy_versions import PolicyRow, SqlPolicies
from kms.sql.schema import key_versions, keys
from kms.sql.store import Store
from kms.usecases.grants import GrantLedger
from kms.usecases.metrics import Metrics
from kms.usecases.policy_source import PolicySource
from kms.usecases.release import KeyRelease, Released, ReleaseDenied, SignedRelease
from proto.contract import SIGNING_DOMAIN
from proto.sovereign.v1 import common_pb2, key_release_pb2

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
# the demo policy, with datasets also released for write: the premises refuse writing a dataset key
DEMO = resources.files("policies.defaults").joinpath("demo.toml").read_text()
DATASET_READ = 'keys = ["dataset/*"]\npurposes = ["read"]'
POLICY = DEMO.replace(DATASET_READ, 'keys = ["dataset/*"]\npurposes = ["read", "write"]')
KEYS = {"vault:v1:dataset/train": b"\x11" * 32, "vault:v1:model/main": b"\x21" * 32}
KEYS["vault:v2:model/main"] = b"\x22" * 32


@dataclass
class FakeTransit:
    """OpenBao's ``unwrap_batch``: fixed plaintexts; ``before`` runs first (a change racing the release)."""

    before: Callable[[], None] | None = None
    calls: list[list[str]] = field(default_factory=list)
    answer: Unwrapped | OpenBaoError | None = None  # instead of the key, for every item

    def unwrap_batch(
        self, ciphertexts: Sequence[str], kek: str | None = None
    ) -> list[Unwrapped | OpenBaoError]:
        self.calls.append(list(ciphertexts))
        if self.before is not None:
            self.before()
        return [self.answer or Unwrapped(KEYS[c], f"bao-{len(self.calls)}") for c in ciphertexts]


@dataclass(frozen=True)
class Peer:
    node_id: str
    signing_public: bytes


@dataclass
class World:
    store: Store
    clock: ManualClock
    transit: FakeTransit
    metrics: Metrics
    release: KeyRelease
    identity: NodeIdentity
    node_id: str = "n-1"

    def request(
        self,
        key: str = "dataset/train",
        purpose: str = "read",
        *,
        version: int = 0,
        rid: bytes = b"\x01" * 16,
        when: datetime | None = None,
        identity: NodeIdentity | None = None,
    ) -> SignedRelease:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(when or self.clock())
        body = key_release_pb2.ReleaseRequestBody(
            node_id=self.node_id,
            key_name=key,
            request_id=rid,
            timestamp=stamp,
            key_version=version,
            purpose=common_pb2.PURPOSE_WRITE if purpose == "write" else common_pb2.PURPOSE_READ,
        ).SerializeToString(deterministic=True)
        signer = identity or self.identity
        return release_in(
            key_release_pb2.ReleaseRequest(body=body, signature=signer.sign(SIGNING_DOMAIN + body))
        )

    def run(self, request: SignedRelease, peer: Peer | None = None) -> Released:
        return asyncio.run(self.release.release(request, peer))

    def denied(self, request: SignedRelease, peer: Peer | None = None) -> ReleaseDenied:
        with pytest.raises(ReleaseDenied) as info:
            self.run(request, peer)
        return info.value

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        path = self.store.engine.url.database
        assert path is not None
        return sqlite3.connect(path).execute(sql).fetchall()

    def set_node(self, **values: Any) -> None:
        with self.store.transaction() as conn:
            conn.execute(update(nodes).where(nodes.c.node_id == self.node_id).values(**values))

    def set_key(self, name: str, **values: Any) -> None:
        with self.store.transaction() as conn:
            conn.execute(update(keys).where(keys.c.name == name).values(**values))

    def denial_count(self, code: str) -> float:
        return (
            self.metrics.registry.get_sample_value("sovereign_release_denials_total", {"code": code}) or 0.0
        )


def _key(name: str, kind: KeyKind, versions: int) -> KeyRecord:
    return KeyRecord(
        name,
        kind,
        KeyState.ACTIVE,
        versions,
        NOW,
        NOW,
        None,
        tuple(KeyVersion(v, f"vault:v{v}:{name}", 1, NOW) for v in range(1, versions + 1)),
    )


def attested_record(identity: NodeIdentity) -> NodeRecord:
    """Node n-1, attested in group trainers with a five-minute lease, holding ``identity``'s keys."""
    return NodeRecord(
        node_id="n-1",
        node_name="n",
        state=NodeState.ATTESTED,
        tee="snp",
        kem_suite=identity.kem_suite,
        kem_public=identity.kem_public,
        signing_public=identity.signing_public,
        claims={},
        claims_digest="",
        groups=("trainers",),
        requested_groups=(),
        reasons=(),
        evidence_time=NOW,
        lease_id="l-1",
        lease_issued_at=NOW,
        lease_expires_at=NOW + timedelta(seconds=300),
        policy_version=1,
        registered_at=NOW,
        attested_at=NOW,
        state_changed_at=NOW,
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(NOW)
    store = open_store(tmp_path / "db.sqlite")
    identity = NodeIdentity.generate()
    SqlNodes(store).insert(attested_record(identity))
    key_store = SqlKeyStore(store)
    key_store.insert(_key("dataset/train", KeyKind.DATASET, 1))
    key_store.insert(_key("model/main", KeyKind.MODEL, 2))
    policies = PolicySource(store, clock)
    policies.seed(POLICY, "test")
    transit = FakeTransit()
    commit = GroupCommit(store)
    metrics = Metrics()
    ledger = GrantLedger(store, transit, commit, clock, metrics=metrics)  # type: ignore[arg-type]
    release = KeyRelease(
        store,
        catalogue=Catalogue(key_store, None, clock),
        ledger=ledger,
        policies=policies,
        clock=clock,
        metrics=metrics,
    )
    try:
        yield World(store, clock, transit, metrics, release, identity)
    finally:
        ledger.close()
        commit.close()
        store.close()


def test_the_policy_under_test_differs_from_the_demo_policy_as_intended() -> None:
    assert DATASET_READ in DEMO and POLICY != DEMO


def test_a_grant_is_recorded_then_sealed_to_the_node(world: World) -> None:
    released = world.run(world.request())
    assert (
        open_sealed_key(world.identity.kem_private_key(), released.sealed_key, released.aad)
        == KEYS["vault:v1:dataset/train"]
    )
    assert (released.key_version, released.lease_expires_at) == (1, NOW + timedelta(seconds=300))
    assert world.rows("SELECT sequence, openbao_request_id FROM grants") == [
        (released.audit_sequence, "bao-1")
    ]
    assert world.rows("SELECT count(*) FROM denials") == [(0,)]
    assert world.metrics.registry.get_sample_value("sovereign_releases_total", {"purpose": "read"}) == 1.0
    assert world.metrics.registry.get_sample_value("sovereign_release_seconds_count") == 1.0
    sample = world.metrics.registry.get_sample_value
    assert sample("sovereign_release_batch_size_count") == 1.0
    assert sample("sovereign_release_batch_size_sum") == 1.0
    for stage in ("unwrap", "commit"):
        assert sample("sovereign_release_batch_seconds_count", {"stage": stage}) == 1.0


def test_write_gets_the_latest_version_of_a_model_key(world: World) -> None:
    released = world.run(world.request("model/main", "write"))
    assert released.key_version == 2
    key = open_sealed_key(world.identity.kem_private_key(), released.sealed_key, released.aad)
    assert key == KEYS["vault:v2:model/main"]


def _destroy_v1(world: World) -> None:
    with world.store.transaction() as conn:
        conn.execute(update(key_versions).where(key_versions.c.version == 1).values(ciphertext=None))


# (what to change first, the request's arguments, the code the node gets)
DENIALS: dict[str, tuple[Callable[[World], object], dict[str, Any], str]] = {
    "suspended": (lambda w: w.set_node(state="suspended"), {}, "RELEASE_NODE_NOT_ATTESTED"),
    "lease-expired": (lambda w: w.clock.advance(301), {}, "RELEASE_LEASE_EXPIRED"),
    "no-rule": (lambda w: None, {"key": "secret/x"}, "RELEASE_NO_RULE"),
    "key-missing": (lambda w: None, {"key": "dataset/missing"}, "KEY_NOT_FOUND"),
    "key-disabled": (lambda w: w.set_key("dataset/train", state="disabled"), {}, "KEY_DISABLED"),
    "key-destroyed": (lambda w: w.set_key("dataset/train", state="destroyed"), {}, "KEY_DESTROYED"),
    "version-missing": (lambda w: None, {"version": 9}, "KEY_VERSION_NOT_FOUND"),
    "version-without-material": (_destroy_v1, {"key": "model/main", "version": 1}, "KEY_DESTROYED"),
    "dataset-write": (lambda w: None, {"purpose": "write"}, "RELEASE_PURPOSE_NOT_ALLOWED"),
    "old-version-write": (
        lambda w: None,
        {"key": "model/main", "purpose": "write", "version": 1},
        "RELEASE_VERSION_NOT_WRITABLE",
    ),
    "clock-skew": (lambda w: None, {"when": NOW - timedelta(seconds=121)}, "REQUEST_CLOCK_SKEW"),
}


@pytest.mark.parametrize("case", list(DENIALS))
def test_each_denial_before_the_unwrap_is_recorded_counted_and_never_unwrapped(
    world: World, case: str
) -> None:
    change, args, code = DENIALS[case]
    change(world)
    denied = world.denied(world.request(**args))
    assert denied.code == code
    assert world.rows("SELECT id, code FROM denials") == [(denied.denial_id, code)]
    assert world.rows("SELECT count(*) FROM grants") == [(0,)]
    assert world.transit.calls == []
    assert world.denial_count(code) == 1.0


def test_a_node_no_rule_entitles_learns_nothing_about_the_key(world: World) -> None:
    """The key-name oracle: whether ``other/...`` exists, the node gets the same answer; only the
    ledger has the catalogue's."""
    SqlKeyStore(world.store).insert(_key("other/exists", KeyKind.DATASET, 1))
    exists = world.denied(world.request("other/exists"))
    missing = world.denied(world.request("other/missing", rid=b"\x02" * 16))
    assert exists.code == missing.code == "RELEASE_NO_RULE"
    assert len(exists.reasons) == len(missing.reasons) == 1
    assert exists.hint == missing.hint
    assert exists.message.replace("exists", "X") == missing.message.replace("missing", "X")
    ledger = world.rows("SELECT key_name, code FROM denials ORDER BY id")
    assert ledger == [("other/exists", "RELEASE_NO_RULE"), ("other/missing", "RELEASE_NO_RULE")]


@pytest.mark.parametrize(
    ("peer", "code"),
    [
        pytest.param(
            lambda w: Peer("n-2", w.identity.signing_public), "RELEASE_CLIENT_CERT_MISMATCH", id="other-node"
        ),
        pytest.param(lambda w: Peer("n-1", b"\x01" * 32), "RELEASE_CLIENT_CERT_MISMATCH", id="other-key"),
    ],
)
def test_a_client_certificate_of_another_node_is_a_recorded_denial(
    world: World, peer: Callable[[World], Peer], code: str
) -> None:
    denied = world.denied(world.request(), peer(world))
    assert denied.code == code
    assert world.rows("SELECT code FROM denials") == [(code,)]
    assert world.transit.calls == []
    assert (
        world.run(world.request(rid=b"\x02" * 16), Peer("n-1", world.identity.signing_public)).key_version
        == 1
    )


def test_the_certificate_check_comes_before_every_other_denial(world: World) -> None:
    world.set_node(state="revoked")
    denied = world.denied(world.request(), Peer("n-2", world.identity.signing_public))
    assert denied.code == "RELEASE_CLIENT_CERT_MISMATCH"


def _unknown_node_request(world: World) -> SignedRelease:
    world.node_id = "n-9"
    return world.request()


@pytest.mark.parametrize(
    ("request_of", "code"),
    [
        pytest.param(
            lambda w: w.request(identity=NodeIdentity.generate()), "REQUEST_SIGNATURE_INVALID", id="bad-sig"
        ),
        pytest.param(_unknown_node_request, "NODE_NOT_FOUND", id="unknown-node"),
    ],
)
def test_unauthenticated_requests_are_refused_counted_not_recorded(
    world: World, request_of: Callable[[World], SignedRelease], code: str
) -> None:
    with pytest.raises(KmsError) as info:
        world.run(request_of(world))
    assert info.value.code.value == code
    assert world.rows("SELECT count(*) FROM denials") == [(0,)]
    assert world.denial_count(code) == 1.0


def test_a_lease_renewed_since_the_cached_read_is_decided_again_once(world: World) -> None:
    world.run(world.request())  # caches the node with lease l-1
    world.set_node(lease_id="l-2", lease_expires_at=NOW + timedelta(seconds=600))  # a renewal
    released = world.run(world.request(rid=b"\x02" * 16))
    assert released.lease_expires_at == NOW + timedelta(seconds=300)
    assert len(world.transit.calls) == 3  # the first try was unwrapped, refused at commit, then retried
    # the first try stays in the ledger with its decrypt; the request id was not used up
    assert world.rows("SELECT code, openbao_request_id FROM denials") == [("RELEASE_NODE_CHANGED", "bao-2")]
    assert world.rows("SELECT count(*) FROM grants") == [(2,)]


def test_the_retry_after_a_lease_change_happens_only_once(world: World) -> None:
    leases = iter(range(2, 100))
    world.transit.before = lambda: world.set_node(lease_id=f"l-{next(leases)}")  # renews during every unwrap
    denied = world.denied(world.request())
    assert denied.code == "RELEASE_NODE_CHANGED"
    assert len(world.transit.calls) == 2
    assert [r[0] for r in world.rows("SELECT code FROM denials")] == ["RELEASE_NODE_CHANGED"] * 2


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param(
            lambda w: w.set_node(state="revoked", lease_id=None), "RELEASE_NODE_NOT_ATTESTED", id="revoked"
        ),
        pytest.param(
            lambda w: w.set_key("dataset/train", state="disabled"), "KEY_DISABLED", id="key-disabled"
        ),
        pytest.param(lambda w: _append_policy(w.store), "RELEASE_POLICY_CHANGED", id="policy-changed"),
    ],
)
def test_a_change_between_decision_and_commit_refuses_the_grant(
    world: World, change: Callable[[World], None], code: str
) -> None:
    world.transit.before = lambda: change(world)
    denied = world.denied(world.request())
    assert denied.code == code
    assert world.rows("SELECT count(*) FROM grants") == [(0,)]
    # the decrypt that happened is accounted for in the ledger
    assert world.rows("SELECT id, code, openbao_request_id FROM denials") == [
        (denied.denial_id, code, "bao-1")
    ]
    assert world.denial_count(code) == 1.0


def _append_policy(store: Store) -> None:
    with store.transaction() as conn:
        SqlPolicies(store).append(conn, PolicyRow(2, POLICY, "0" * 64, NOW, "test"))


def test_an_openbao_failure_is_its_coded_error_and_grants_nothing(world: World) -> None:
    world.transit.answer = OpenBaoError("sealed", code=Code.KMS_SEALED)
    with pytest.raises(OpenBaoError) as info:
        world.run(world.request())
    assert info.value.code is Code.KMS_SEALED
    assert world.rows("SELECT count(*) FROM grants") == [(0,)]
    assert world.denial_count("KMS_SEALED") == 1.0


def test_a_key_that_does_not_unwrap_to_32_bytes_is_a_recorded_denial(world: World) -> None:
    world.transit.answer = Unwrapped(b"\x01" * 16, "bao-short")
    denied = world.denied(world.request())
    assert denied.code == "KMS_BAD_RESPONSE"
    assert world.rows("SELECT code, openbao_request_id FROM denials") == [("KMS_BAD_RESPONSE", "bao-short")]
    assert world.rows("SELECT count(*) FROM grants") == [(0,)]


def test_a_replayed_request_is_refused_at_commit(world: World) -> None:
    request = world.request()
    world.run(request)
    denied = world.denied(request)
    assert denied.code == "REQUEST_REPLAYED"
    assert world.rows("SELECT code FROM denials") == [("REQUEST_REPLAYED",)]
    assert world.rows("SELECT count(*) FROM grants") == [(1,)]


def test_a_request_twice_in_one_batch_is_granted_once(world: World) -> None:
    request = world.request()

    async def both() -> list[Released | BaseException]:
        # the first request goes alone at once; the two copies gather behind it into one batch
        calls = (
            world.release.release(world.request(rid=b"\x02" * 16)),
            world.release.release(request),
            world.release.release(request),
        )
        return list(await asyncio.gather(*calls, return_exceptions=True))

    other, first, second = asyncio.run(both())
    assert isinstance(other, Released) and isinstance(first, Released)
    assert isinstance(second, ReleaseDenied) and second.code == "REQUEST_REPLAYED"
    ciphertext = "vault:v1:dataset/train"
    assert world.transit.calls == [[ciphertext], [ciphertext] * 2]  # one batch decrypt for both copies
    assert world.metrics.registry.get_sample_value("sovereign_release_batch_size_sum") == 3.0


# --- the premises check itself ----------------------------------------------------------------------

GRANT = Grant("n-1", "l-1", "model/main", 2, "write", 1, NOW)
STANDING = Snapshot(
    NodeStanding(NodeState.ATTESTED, "l-1", NOW + timedelta(seconds=300)),
    KeyStanding(KeyKind.MODEL, KeyState.ACTIVE, 2, {1: True, 2: True}),
    1,
)


@pytest.mark.parametrize(
    ("snapshot", "code"),
    [
        (STANDING, None),
        (Snapshot(None, STANDING.key, 1), "RELEASE_NODE_NOT_ATTESTED"),
        (
            Snapshot(NodeStanding(NodeState.SUSPENDED, "l-1", NOW), STANDING.key, 1),
            "RELEASE_NODE_NOT_ATTESTED",
        ),
        (
            Snapshot(NodeStanding(NodeState.ATTESTED, "l-2", NOW + timedelta(1)), STANDING.key, 1),
            "RELEASE_NODE_CHANGED",
        ),
        (Snapshot(NodeStanding(NodeState.ATTESTED, "l-1", NOW), STANDING.key, 1), "RELEASE_NODE_CHANGED"),
        (Snapshot(STANDING.node, None, 1), "KEY_NOT_FOUND"),
        (
            Snapshot(STANDING.node, KeyStanding(KeyKind.MODEL, KeyState.DISABLED, 2, {1: True, 2: True}), 1),
            "KEY_DISABLED",
        ),
        (
            Snapshot(
                STANDING.node, KeyStanding(KeyKind.MODEL, KeyState.ACTIVE, 3, {1: True, 2: True, 3: True}), 1
            ),
            "RELEASE_VERSION_NOT_WRITABLE",
        ),
        (
            Snapshot(STANDING.node, KeyStanding(KeyKind.DATASET, KeyState.ACTIVE, 2, {1: True, 2: True}), 1),
            "RELEASE_PURPOSE_NOT_ALLOWED",
        ),
        (
            Snapshot(STANDING.node, KeyStanding(KeyKind.MODEL, KeyState.ACTIVE, 2, {1: True, 2: False}), 1),
            "KEY_DESTROYED",
        ),
        (
            Snapshot(STANDING.node, KeyStanding(KeyKind.MODEL, KeyState.ACTIVE, 1, {1: True}), 1),
            "KEY_VERSION_NOT_FOUND",
        ),
        (Snapshot(STANDING.node, STANDING.key, 2), "RELEASE_POLICY_CHANGED"),
        (Snapshot(STANDING.node, STANDING.key, 1, request_seen=True), "REQUEST_REPLAYED"),
    ],
)
def test_check_premises(snapshot: Snapshot, code: str | None) -> None:
    reason = check_premises(GRANT, snapshot)
    assert (reason.code if reason else None) == code
    if reason is not None:
        assert reason.message and "vault:" not in reason.message
