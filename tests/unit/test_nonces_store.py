"""Challenge nonces on a real SQLite file: single use (spent even when the attempt fails), expiry,
binding to the node name, and purging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kms.clock import ManualClock
from kms.errors import Code, KmsError
from kms.sql import open_store
from kms.usecases.nonces import NONCE_BYTES, NonceError, Nonces


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def nonces(tmp_path: Path, clock: ManualClock) -> Nonces:
    return Nonces(open_store(tmp_path / "db.sqlite"), clock, ttl=timedelta(seconds=60))


def code_of(fn: object, *args: object) -> str:
    with pytest.raises(KmsError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.code.value


def test_issue_gives_32_fresh_bytes_with_expiry(nonces: Nonces, clock: ManualClock) -> None:
    a, b = nonces.issue("node-a"), nonces.issue("node-a")
    assert len(a.nonce) == NONCE_BYTES and a.nonce != b.nonce
    assert a.expires_at == clock.now + timedelta(seconds=60)


def test_single_use(nonces: Nonces) -> None:
    challenge = nonces.issue("node-a")
    nonces.consume(challenge.nonce, "node-a")
    assert code_of(nonces.consume, challenge.nonce, "node-a") == "NONCE_REPLAYED"


def test_expired_nonce_is_spent_too(nonces: Nonces, clock: ManualClock) -> None:
    challenge = nonces.issue("node-a")
    clock.advance(60)
    assert code_of(nonces.consume, challenge.nonce, "node-a") == "NONCE_EXPIRED"
    assert code_of(nonces.consume, challenge.nonce, "node-a") == "NONCE_REPLAYED"


def test_just_before_expiry_is_fine(nonces: Nonces, clock: ManualClock) -> None:
    challenge = nonces.issue("node-a")
    clock.advance(59.999)
    nonces.consume(challenge.nonce, "node-a")


def test_name_mismatch_spends_the_nonce(nonces: Nonces) -> None:
    challenge = nonces.issue("node-a")
    assert code_of(nonces.consume, challenge.nonce, "node-b") == "NONCE_NAME_MISMATCH"
    assert code_of(nonces.consume, challenge.nonce, "node-a") == "NONCE_REPLAYED"


def test_unknown_and_malformed(nonces: Nonces) -> None:
    assert code_of(nonces.consume, b"\x00" * 32, "node-a") == "NONCE_UNKNOWN"
    assert code_of(nonces.consume, b"\x00" * 31, "node-a") == "REQUEST_INVALID"
    assert code_of(nonces.issue, "Node_A") == "REQUEST_INVALID"
    assert code_of(nonces.issue, "-a") == "REQUEST_INVALID"
    assert code_of(nonces.issue, "a" * 64) == "REQUEST_INVALID"


def test_old_rows_are_purged_by_later_challenges(nonces: Nonces, clock: ManualClock) -> None:
    old = nonces.issue("node-a")
    clock.advance(121)
    nonces.issue("node-b")  # purges rows expired more than one lifetime ago
    assert code_of(nonces.consume, old.nonce, "node-a") == "NONCE_UNKNOWN"


def test_consumption_survives_a_new_store_object(tmp_path: Path, clock: ManualClock) -> None:
    first = Nonces(open_store(tmp_path / "db.sqlite"), clock)
    challenge = first.issue("node-a")
    first.consume(challenge.nonce, "node-a")
    second = Nonces(open_store(tmp_path / "db.sqlite"), clock)  # e.g. another replica or a restart
    with pytest.raises(NonceError) as info:
        second.consume(challenge.nonce, "node-a")
    assert info.value.code is Code.NONCE_REPLAYED
