"""Frozen DDL for the output digest index (appended to ``migrations.MIGRATIONS`` as version 7).

``model_outputs`` holds, for every granted ``model.output`` ledger entry, the plaintext's and the sealed
file's SHA-256 (lowercase hex, as the entry records them), so an output is found by either digest through
an index instead of by reading every output entry. It is derived data: the entry's canonical bytes stay
the authority, and whoever reads a row checks it against them. The migration fills it from the entries
already in the ledger. Frozen history: never edit; later changes are new migrations.
"""

from __future__ import annotations

import json

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, column, insert, select, table
from sqlalchemy.engine import Connection

BACKFILL_BATCH = 1000


def v7_model_output_digests(conn: Connection) -> None:
    md = MetaData()
    outputs = Table(
        "model_outputs",
        md,
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("output_sha256", String(64), nullable=False),
        Column("sealed_sha256", String(64), nullable=False),
    )
    Index("ix_model_outputs_output", outputs.c.output_sha256, outputs.c.seq)
    Index("ix_model_outputs_sealed", outputs.c.sealed_sha256, outputs.c.seq)
    md.create_all(conn)
    entries = table("audit_entries", column("seq"), column("kind"), column("decision"), column("canonical"))
    found = conn.execute(
        select(entries.c.seq, entries.c.canonical)
        .where(entries.c.kind == "model.output", entries.c.decision == "grant")
        .order_by(entries.c.seq)
    )
    rows = []
    for seq, canonical in found:
        fields = json.loads(bytes(canonical))["fields"]
        rows.append(
            {
                "seq": int(seq),
                "output_sha256": str(fields["output_sha256"]),
                "sealed_sha256": str(fields["sealed_sha256"]),
            }
        )
        if len(rows) == BACKFILL_BATCH:
            conn.execute(insert(outputs), rows)
            rows = []
    if rows:
        conn.execute(insert(outputs), rows)
