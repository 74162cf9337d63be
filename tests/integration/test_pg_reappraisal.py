"""The set-based re-appraisal on PostgreSQL (its pages come from a server-side cursor there, its writes are
executemany over psycopg): the same comparison with the node-by-node path as
tests/unit/test_reappraisal_batched.py makes on SQLite."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from node_fakes import NOW
from pg.server import PostgresServer
from sqlalchemy import insert
from unit import test_reappraisal_batched as same

from kms.domain.registry import NodeRecord
from kms.sql import open_store
from kms.sql.control_schema import nodes
from kms.sql.nodes import to_row
from kms.sql.store import Store
from kms.usecases.reappraisal import reappraise_stored, write_changes
from policies import parse_policy

pytestmark = pytest.mark.integration


def filled(url: str, records: list[NodeRecord]) -> Store:
    store = open_store(url)
    with store.transaction() as conn:
        conn.execute(insert(nodes), [to_row(r) for r in records])
    return store


def test_batched_reappraisal_matches_the_node_by_node_path_on_postgresql(pg_server: PostgresServer) -> None:
    policy = parse_policy(same.STRICTER, "test")
    records = same.registry(random.Random(6))[:600]
    ours = filled(pg_server.create_database("reappraisal_ours"), records)
    theirs = filled(pg_server.create_database("reappraisal_ref"), records)
    now = NOW + timedelta(days=1)
    with ours.transaction() as conn:
        found = reappraise_stored(conn, policy, now, page=53)
        write_changes(conn, found.changes, now, page=41)
    checked, expected = same.reference(theirs, policy)
    assert found.checked == checked and list(found.changes) == expected and len(expected) > 60
    assert same.rows(ours) == same.rows(theirs)
