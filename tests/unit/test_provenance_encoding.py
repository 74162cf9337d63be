"""The issuer's payload encoding: ``encode_statement`` splices each proven entry's encoding, made once, into
the statement; the bytes must be exactly RFC 8785's encoding of the whole statement (the ``rfc8785``
library over the full statement is the oracle), whatever the entries' text holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from unit.provenance_ledger import CLAIMS, training_ledger

from kms.audit.entry import format_time
from kms.audit.merkle import inclusion_proof
from kms.provenance.lineage import derive
from kms.provenance.statement import ProvenEntry, build_statement, encode_statement, encode_text

ODD_TEXT = [
    'quote " backslash \\ tab \t newline \n nul \x00 unit \x1f del \x7f',
    "é ü ß 漢字 😀 \u2028 \u2029 \ud7ff\ue000\uffff",
    "",
]


def statement_and_entries(datasets: int) -> tuple[dict[str, Any], list[ProvenEntry]]:
    led, out = training_ledger(datasets)
    cp = led.checkpoint()
    lineage = derive(led.entries, out)
    entries = [
        ProvenEntry(s, led.entries[s].encode(), tuple(inclusion_proof(led.store, s, cp.size)))
        for s in lineage.sequences()
    ]
    statement = build_statement(
        lineage,
        claims=CLAIMS,
        output_sha256="ab" * 32,
        key_version=7,
        issued_at=format_time(datetime(2026, 5, 1, tzinfo=UTC)),
        checkpoint=cp,
        entries=entries,
    )
    return statement, entries


@pytest.mark.parametrize("datasets", [0, 1, 10, 100])
def test_the_spliced_encoding_is_rfc_8785_of_the_whole_statement(datasets: int) -> None:
    statement, entries = statement_and_entries(datasets)
    assert encode_statement(statement, entries) == rfc8785.dumps(statement)


@pytest.mark.parametrize("text", ODD_TEXT, ids=["escapes", "non-ascii", "empty"])
def test_entries_with_any_text_encode_as_rfc_8785_does(text: str) -> None:
    statement, entries = statement_and_entries(2)
    odd = [ProvenEntry(e.seq, (text + e.canonical.decode()).encode(), e.proof) for e in entries]
    reused = [ProvenEntry(e.seq, e.canonical, e.proof, encode_text(e.canonical)) for e in odd]
    statement["predicate"]["ledger"]["entries"] = [e.to_obj() for e in odd]
    statement["predicate"]["node"]["name"] = text  # outside the spliced part too
    want = rfc8785.dumps(statement)
    assert encode_statement(statement, odd) == want
    assert encode_statement(statement, reused) == want  # an encoding made earlier is the same bytes


def test_claims_encoded_once_are_spliced_in_as_rfc_8785_would_encode_them() -> None:
    statement, entries = statement_and_entries(3)
    claims = statement["predicate"]["cpu"]["claims"]
    assert claims is not None
    claims["odd"] = {"é": ODD_TEXT, "\U0001f600": [1, None, True], "\uffff": 2}  # keys sorted by UTF-16
    want = rfc8785.dumps(statement)
    assert encode_statement(statement, entries, rfc8785.dumps(claims)) == want
    statement["predicate"]["cpu"]["claims"] = None  # claims not the registration's: nothing to splice
    assert encode_statement(statement, entries, rfc8785.dumps(claims)) == rfc8785.dumps(statement)
