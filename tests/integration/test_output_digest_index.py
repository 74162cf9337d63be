"""The output digest index (migration 6, ``kms.sql.outputs``) on SQLite and PostgreSQL: an output is found
by its plaintext's or sealed file's SHA-256 through an index; the migration fills the index from the
``model.output`` entries already in the ledger; a row that disagrees with its entry finds nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from integration.conftest import Kms
from sqlalchemy import delete, insert, inspect, select, update

from kms.audit.checkpoint import LocalSigner, sign_checkpoint
from kms.audit.draft import Draft
from kms.audit.entry import Decision, Kind, Reason, format_time
from kms.audit.merkle import range_hash
from kms.errors import Code, KmsError
from kms.openbao.vault import OpenBaoTransit
from kms.sql import migrations, open_store, schema
from kms.sql.audit_append import append_entries
from kms.sql.audit_ledger import insert_checkpoint
from kms.sql.audit_reader import DbHashStore
from kms.sql.audit_schema import model_outputs
from kms.sql.outputs import index_output, output_by_digest
from kms.sql.store import Store
from kms.usecases.provenance_issue import ProvenanceIssuer

pytestmark = pytest.mark.integration

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
NODE = "n-0123456789abcdef01234567"


def sha(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def output_draft(name: str, decision: Decision = Decision.GRANT) -> Draft:
    reasons = () if decision is Decision.GRANT else (Reason("OUTPUT_NO_WRITE_GRANT", "no write grant"),)
    fields = {
        "node_id": NODE, "key_name": "model/main", "key_version": 1, "request_id": sha(name)[:32],
        "header_sha256": sha(name + ".header"), "output_sha256": sha(name), "output_size": 10,
        "sealed_sha256": sha(name + ".sealed"),
    }  # fmt: skip
    return Draft(Kind.MODEL_OUTPUT, f"node:{NODE}", decision, reasons, fields)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    s = open_store(url, clock=lambda: NOW)
    yield s
    s.engine.dispose()


def record(store: Store, draft: Draft) -> int:
    """What ``OutputRecorder`` does in its transaction: the entry, then (for a grant) its index row."""
    with store.transaction() as conn:
        (seq,) = append_entries(conn, [draft], NOW)
        if draft.decision is Decision.GRANT:
            index_output(conn, seq, str(draft.fields["output_sha256"]), str(draft.fields["sealed_sha256"]))
    return seq


def test_an_output_is_found_by_either_digest_newest_first(store: Store) -> None:
    with store.transaction() as conn:
        append_entries(conn, [Draft(Kind.SERVER_START, "server", Decision.NONE, (), {})], NOW)
    first = record(store, output_draft("a"))
    other = record(store, output_draft("b"))
    refused = record(store, output_draft("c", Decision.DENY))
    again = record(store, output_draft("a"))  # the same bytes sealed again later: the newest entry answers
    with store.reader() as conn:
        found = output_by_digest(conn, sha("a"))
        assert found is not None and found[0] == again and sha("a").encode() in found[1]
        assert output_by_digest(conn, sha("a.sealed")) == found
        assert output_by_digest(conn, sha("b"))[0] == other  # type: ignore[index]
        assert output_by_digest(conn, sha("b.sealed"))[0] == other  # type: ignore[index]
        assert output_by_digest(conn, sha("c")) is None  # a refused output is no output
        assert output_by_digest(conn, sha("a.header")) is None  # the header digest is not a subject
        assert output_by_digest(conn, sha("nothing")) is None
    assert first < other < refused < again


def test_a_row_that_disagrees_with_its_entry_finds_nothing(store: Store) -> None:
    seq = record(store, output_draft("a"))
    with store.transaction() as conn:
        conn.execute(update(model_outputs).where(model_outputs.c.seq == seq).values(output_sha256=sha("x")))
    with store.reader() as conn:
        assert output_by_digest(conn, sha("x")) is None  # the entry's bytes are the authority
        assert output_by_digest(conn, sha("a.sealed")) is not None


def test_the_lookup_uses_the_index(store: Store) -> None:
    for i in range(50):
        record(store, output_draft(str(i)))
    with store.reader() as conn:
        if store.is_sqlite:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT max(seq) FROM model_outputs WHERE sealed_sha256 = ?", (sha("7"),)
            ).all()
            assert "ix_model_outputs_sealed" in " ".join(str(r) for r in plan)
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = conn.exec_driver_sql(
                "EXPLAIN SELECT max(seq) FROM model_outputs WHERE output_sha256 = %(h)s", {"h": sha("7")}
            ).all()
            assert "ix_model_outputs_output" in " ".join(str(r) for r in plan)


def test_the_migration_fills_the_index_from_the_ledger(url: str) -> None:
    """A ledger written before version 7 (outputs, a refusal, other entries) is indexed by the migration."""
    old = open_store(url, migrate=False, clock=lambda: NOW)
    with old.transaction() as conn:
        for m in migrations.MIGRATIONS:
            if m.version < 7:
                m.apply(conn)
                conn.execute(
                    insert(schema.schema_version).values(version=m.version, name=m.name, applied_at=NOW)
                )
    granted = []
    with old.transaction() as conn:
        for i in range(3):
            append_entries(conn, [Draft(Kind.SERVER_START, "server", Decision.NONE, (), {})], NOW)
            (seq,) = append_entries(conn, [output_draft(f"old{i}")], NOW)
            granted.append(seq)
        append_entries(conn, [output_draft("refused", Decision.DENY)], NOW)
    assert old.schema_version() == 6
    assert old.migrate() == [7]
    with old.reader() as conn:
        rows = conn.execute(select(model_outputs).order_by(model_outputs.c.seq)).all()
        assert [(r.seq, r.output_sha256, r.sealed_sha256) for r in rows] == [
            (s, sha(f"old{i}"), sha(f"old{i}.sealed")) for i, s in enumerate(granted)
        ]
        assert output_by_digest(conn, sha("old1.sealed"))[0] == granted[1]  # type: ignore[index]
        assert output_by_digest(conn, sha("refused")) is None
    old.engine.dispose()


def test_the_live_table_is_what_the_migration_made(store: Store) -> None:
    live = inspect(store.engine)
    columns = {c["name"]: c["nullable"] for c in live.get_columns("model_outputs")}
    assert columns == {c.name: c.nullable for c in model_outputs.columns}
    assert live.get_pk_constraint("model_outputs")["constrained_columns"] == ["seq"]
    indexes = {i["name"]: i["column_names"] for i in live.get_indexes("model_outputs")}
    assert indexes == {
        "ix_model_outputs_output": ["output_sha256", "seq"],
        "ix_model_outputs_sealed": ["sealed_sha256", "seq"],
    }


def test_get_provenance_finds_the_output_through_the_index(store: Store, kms_dev: Kms) -> None:
    """The issuer's lookup is the index: with the output's row gone, the output is not found (a scan of
    the entries would still find it); with the row, it is found (and this ledger, which has no
    registration for the node, cannot support a statement)."""
    seq = record(store, output_draft("a"))
    with store.transaction() as conn:
        size = seq + 1
        root = range_hash(DbHashStore(conn), 0, size)
        insert_checkpoint(
            conn, sign_checkpoint(LocalSigner(key_id="sovereign-audit"), size, root, format_time(NOW))
        )
    transit = OpenBaoTransit(kms_dev.approle_settings())
    issuer = ProvenanceIssuer(store, transit, lambda: NOW)
    try:
        with pytest.raises(KmsError) as found:
            issuer.issue(bytes.fromhex(sha("a.sealed")))
        assert found.value.code is Code.AUDIT_LEDGER_CORRUPT  # found; the lineage is what is missing
        with store.transaction() as conn:
            conn.execute(delete(model_outputs).where(model_outputs.c.seq == seq))
        with pytest.raises(KmsError) as missing:
            issuer.issue(bytes.fromhex(sha("a.sealed")))
        assert missing.value.code is Code.PROVENANCE_OUTPUT_NOT_FOUND
    finally:
        issuer.close()
        transit.close()
