"""Stored provenance statements (``kms.sql.provenance``) on SQLite and PostgreSQL (migration 6): one row per
output entry; storing again replaces it (a reissue after a revocation, or two servers issuing the same
output at once), in one statement, without a unique-key failure; outputs without a statement are listed
oldest first within the asked range."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kms.audit.draft import Draft
from kms.audit.entry import Decision, Kind
from kms.sql import open_store
from kms.sql.audit_append import append_entries
from kms.sql.provenance import (
    StoredStatement,
    outputs_without_statement,
    revoked_between,
    store_statements,
    stored_statement,
)
from kms.sql.store import Store

pytestmark = pytest.mark.integration
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = (
        str(tmp_path / "db.sqlite") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    made = open_store(url, clock=lambda: NOW)
    request.addfinalizer(made.close)
    return made


def _output(node: str) -> Draft:
    return Draft(
        Kind.MODEL_OUTPUT, f"node:{node}", Decision.GRANT, (), {"node_id": node, "output_sha256": "ab" * 32}
    )


def test_statements_are_stored_replaced_and_listed(store: Store) -> None:
    with store.transaction() as conn:
        seqs = append_entries(conn, [_output("n-a"), _output("n-b"), _output("n-c")], NOW)
        (revoke,) = append_entries(
            conn, [Draft(Kind.NODE_REVOKE, "operator:x", Decision.NONE, (), {"node_id": "n-b"})], NOW
        )
    first = StoredStatement(seqs[0], seqs[0] + 1, 1, b"one", NOW)
    with store.transaction() as conn:
        store_statements(conn, [first])
    with store.reader() as conn:
        assert stored_statement(conn, seqs[0]) == first
        assert stored_statement(conn, seqs[1]) is None
        pending = outputs_without_statement(conn, 0, revoke + 1, 10)
        assert [p.count(b"model.output") for p in pending] == [1, 1]  # the two without a statement
        assert len(outputs_without_statement(conn, 0, revoke + 1, 1)) == 1
        assert outputs_without_statement(conn, seqs[2] + 1, revoke + 1, 10) == []
        assert revoked_between(conn, "n-b", seqs[0], revoke + 1)
        assert not revoked_between(conn, "n-b", revoke + 1, revoke + 5)
        assert not revoked_between(conn, "n-a", 0, revoke + 1)
    again = StoredStatement(seqs[0], revoke + 1, 2, b"two", NOW)
    other = StoredStatement(seqs[1], revoke + 1, 2, b"three", NOW)
    with store.transaction() as conn:
        store_statements(conn, [again, other])  # one replaced, one new, in one statement
    with store.reader() as conn:
        assert stored_statement(conn, seqs[0]) == again
        assert stored_statement(conn, seqs[1]) == other
