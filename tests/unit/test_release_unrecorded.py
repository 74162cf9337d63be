"""A release whose key was decrypted in OpenBao but whose grant transaction failed still leaves a ledger
entry naming that decrypt (``kms.usecases.unrecorded``): found by the soak, where a ``serve`` stopped
(SIGSTOP) right after a decrypt, came back with its writer turn timed out, and OpenBao's audit log then
held a decrypt no entry explained. The world is the one of ``test_release_usecase``: the real use case on
a real SQLite file, a fake transit port, a manual clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from unit.test_release_usecase import NOW, POLICY, FakeTransit, World, _key, attested_record

from enclave.identity import NodeIdentity
from kms.clock import ManualClock
from kms.domain.catalogue import Catalogue, KeyKind
from kms.errors import Code, StorageError
from kms.sql import open_store
from kms.sql.decisions import DenialRow, GrantRow, PendingGrant
from kms.sql.group_commit import GroupCommit
from kms.sql.keys import SqlKeyStore
from kms.sql.nodes import SqlNodes
from kms.usecases.grants import GrantLedger
from kms.usecases.metrics import Metrics
from kms.usecases.policy_source import PolicySource
from kms.usecases.release import KeyRelease
from kms.usecases.unrecorded import Unrecorded

WRITER_TIMEOUT_MS = 200  # how long a writer waits for its turn here (the server's is 5 s)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[World, GrantLedger]]:
    monkeypatch.setattr("kms.sql.store.LOCK_TIMEOUT_MS", WRITER_TIMEOUT_MS)
    clock = ManualClock(NOW)
    store = open_store(tmp_path / "db.sqlite")
    identity = NodeIdentity.generate()
    SqlNodes(store).insert(attested_record(identity))
    key_store = SqlKeyStore(store)
    key_store.insert(_key("dataset/train", KeyKind.DATASET, 1))
    policies = PolicySource(store, clock)
    policies.seed(POLICY, "test")
    transit = FakeTransit()
    commit = GroupCommit(store)
    ledger = GrantLedger(store, transit, commit, clock)  # type: ignore[arg-type]
    metrics = Metrics()
    release = KeyRelease(
        store, catalogue=Catalogue(key_store, None, clock), ledger=ledger, policies=policies, clock=clock
    )
    try:
        yield World(store, clock, transit, metrics, release, identity), ledger
    finally:
        ledger.close()
        commit.close()
        store.close()


def _hold_writer_turn(w: World, seconds: float) -> threading.Thread:
    """Another writer holds the database's writer turn for ``seconds`` (as a stalled checkpointer did)."""
    taken = threading.Event()

    def hold() -> None:
        with w.store.transaction():
            taken.set()
            time.sleep(seconds)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    return holder


def _batch_places(w: World) -> list[tuple[int, int]]:
    """(batch index, batch size) of every release.deny entry: what ``audit reconcile`` matches on."""
    index, size = (
        f"json_extract(CAST(canonical AS TEXT), '$.fields.{f}')"
        for f in ("bao_batch_index", "bao_batch_size")
    )
    return [
        (int(i), int(n))
        for i, n in w.rows(f"SELECT {index}, {size} FROM audit_entries WHERE kind = 'release.deny'")
    ]


def test_a_decrypt_whose_grant_commit_fails_is_recorded_as_a_denial_naming_it(
    world: tuple[World, GrantLedger],
) -> None:
    w, ledger = world
    holders: list[threading.Thread] = []
    # between the decrypt and the commit another writer takes the turn for longer than the wait allows
    w.transit.before = lambda: holders.append(_hold_writer_turn(w, 4 * WRITER_TIMEOUT_MS / 1000))
    with pytest.raises(StorageError) as info:
        w.run(w.request())
    assert info.value.code is Code.STORAGE_ERROR
    assert w.transit.calls == [["vault:v1:dataset/train"]]  # the key was decrypted
    assert ledger.unrecorded.wait_recorded(timeout=20)  # retried until the holder let go
    holders[0].join()
    assert w.rows("SELECT count(*) FROM grants") == [(0,)]
    assert w.rows("SELECT code, openbao_request_id, request_id FROM denials") == [
        ("STORAGE_ERROR", "bao-1", (b"\x01" * 16).hex())
    ]
    assert _batch_places(w) == [(0, 1)]
    message = w.rows("SELECT message FROM denials")[0][0]
    assert "decrypted but its grant could not be committed" in message
    # the ledger still verifies: the late denial is an ordinary entry
    w.transit.before = None
    assert w.run(w.request(rid=b"\x02" * 16)).audit_sequence > 0


def test_a_grant_that_did_commit_gets_no_denial(world: tuple[World, GrantLedger]) -> None:
    """A commit reported failed that did happen (its answer lost): the request id is in the database, so
    no denial contradicts the grant entry."""
    w, ledger = world
    granted = w.run(w.request())
    row = GrantRow(NOW, "n-1", "dataset/train", 1, "read", b"\x01" * 16, "bao-1", NOW, 1, "r")
    denial = DenialRow(
        NOW, "n-1", "dataset/train", "read", b"\x01" * 16, "STORAGE_ERROR", "lost", "bao-1", 0, 1
    )
    ledger.unrecorded.add([Unrecorded(PendingGrant(row, "l-1", NOW + timedelta(minutes=2)), denial)])
    assert ledger.unrecorded.wait_recorded(timeout=10)
    assert ledger.unrecorded.recorded == 0
    assert w.rows("SELECT count(*) FROM denials") == [(0,)]
    assert w.rows("SELECT sequence FROM grants") == [(granted.audit_sequence,)]


def test_denials_wait_while_the_database_refuses_them_and_go_in_once_it_takes_them(
    world: tuple[World, GrantLedger],
) -> None:
    w, ledger = world
    holder = _hold_writer_turn(w, 1.5)  # several retry periods
    row = GrantRow(NOW, "n-1", "dataset/train", 1, "read", b"\x07" * 16, "bao-9", NOW, 1, "r", 1, 2)
    denial = DenialRow(
        NOW, "n-1", "dataset/train", "read", b"\x07" * 16, "STORAGE_ERROR", "full", "bao-9", 1, 2
    )
    ledger.unrecorded.add([Unrecorded(PendingGrant(row, "l-1", NOW + timedelta(minutes=2)), denial)])
    time.sleep(0.5)
    assert ledger.unrecorded.queued() == 1  # not yet: the turn is still held
    holder.join()
    assert ledger.unrecorded.wait_recorded(timeout=10)
    assert w.rows("SELECT openbao_request_id FROM denials") == [("bao-9",)]
    assert _batch_places(w) == [(1, 2)]
