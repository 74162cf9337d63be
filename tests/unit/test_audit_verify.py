"""Offline export verification: a clean export verifies; every kind of tampering gets its own code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.audit.checkpoint import AuditKeys, Checkpoint, LocalSigner, load_audit_keys, sign_checkpoint
from kms.audit.entry import Decision, Entry, Kind, Reason
from kms.audit.errors import AuditError, ExportInvalid
from kms.audit.export import ExportBuilder, entry_line, header_line
from kms.audit.merkle import leaf_hash, root_of
from kms.audit.verify import unchecked_head_error, verify_export
from kms.errors import Code

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIGNER = LocalSigner(key_id="sovereign-audit")
KEYS = load_audit_keys(SIGNER.public_key_bytes())


def entry(seq: int, **fields: object) -> bytes:
    return Entry.create(
        seq,
        T0 + timedelta(milliseconds=seq),
        Kind.RELEASE_GRANT if seq % 3 else Kind.RELEASE_DENY,
        actor=f"node:n{seq % 5}",
        decision=Decision.GRANT if seq % 3 else Decision.DENY,
        reasons=() if seq % 3 else (Reason("RELEASE_LEASE_EXPIRED", "lease expired \u00e9"),),
        fields={"node_id": f"n{seq % 5}", "key_name": "ds", "key_version": 1, "request_id": f"{seq:032x}"}
        | fields,
    ).encode()


def build(n: int = 40, every: int = 6, *, signer: LocalSigner = SIGNER, proofs: bool = True) -> list[bytes]:
    """An export of ``n`` entries with a checkpoint after every ``every`` entries and one at the end."""
    b = ExportBuilder(signer, with_proofs=proofs)
    body = []
    for i in range(n):
        body.append(b.add(entry(i)))
        if i % every == every - 1 and i != n - 1:
            body.append(b.checkpoint(T0 + timedelta(seconds=i)))
    body.append(b.checkpoint(T0 + timedelta(seconds=n + 1)))
    return [b.header(), *body]


def code_of(lines: list[bytes], keys: AuditKeys = KEYS, trusted: Checkpoint | None = None) -> ExportInvalid:
    with pytest.raises(ExportInvalid) as info:
        verify_export(lines, keys, trusted=trusted)
    return info.value


def entry_index(lines: list[bytes], seq: int) -> int:
    return next(
        i
        for i, line in enumerate(lines)
        if line.startswith(b'{"entry":') and f'"seq":{seq},'.encode() in line
    )


def test_a_generated_export_verifies() -> None:
    lines = build()
    report = verify_export(lines, KEYS)
    assert (report.entries, report.size, report.key_id) == (40, 40, "sovereign-audit")
    assert report.checkpoints == 7
    assert report.root == root_of([leaf_hash(entry(i)) for i in range(40)]).hex()


@pytest.mark.parametrize("n", [0, 1, 2, 5, 64])
def test_edge_sizes_verify(n: int) -> None:
    assert verify_export(build(n, every=4, proofs=n % 2 == 0), KEYS).size == n


def test_a_thinned_export_still_verifies() -> None:
    # without consistency proofs, which link each checkpoint line to the previous one present
    lines = build(proofs=False)
    thinned = [x for i, x in enumerate(lines) if i in (0, len(lines) - 1) or x.startswith(b'{"entry":')]
    assert verify_export(thinned, KEYS).checkpoints == 1


def test_edited_entry_is_a_root_mismatch_at_the_next_checkpoint() -> None:
    lines = build()
    i = entry_index(lines, 9)
    lines[i] = entry_line(entry(9, key_version=2))
    err = code_of(lines)
    assert err.code == Code.AUDIT_ROOT_MISMATCH
    assert "checkpoint 1 root mismatch after entry 11" in err.message
    assert err.line == i + 4


def test_re_encoded_entry_is_non_canonical() -> None:
    lines = build()
    i = entry_index(lines, 3)
    lines[i] = lines[i].replace(b'"decision":', b'"decision": ')
    err = code_of(lines)
    assert (err.code, err.line, err.index) == (Code.AUDIT_NON_CANONICAL, i + 1, 3)


@pytest.mark.parametrize(
    ("bad", "code"), [(b"\xff", Code.AUDIT_MALFORMED_EXPORT), (b"\xed\xa0\x80", Code.AUDIT_NON_CANONICAL)]
)
def test_invalid_utf8_in_an_entry_is_refused(bad: bytes, code: Code) -> None:
    lines = build()
    i = entry_index(lines, 3)
    assert "\u00e9".encode() in lines[i]
    lines[i] = lines[i].replace("\u00e9".encode(), bad)
    err = code_of(lines)
    assert (err.code, err.line, err.index) == (code, i + 1, 3)


def test_unknown_kind_is_an_invalid_entry() -> None:
    lines = build()
    i = entry_index(lines, 4)
    lines[i] = lines[i].replace(b"release.grant", b"release.other")
    assert code_of(lines).code == Code.AUDIT_ENTRY_INVALID


def test_deleted_entry_is_a_gap() -> None:
    lines = build()
    i = entry_index(lines, 7)
    del lines[i]
    err = code_of(lines)
    assert (err.code, err.line, err.index) == (Code.AUDIT_SEQUENCE_GAP, i + 1, 7)
    assert "entries 7..7 are missing" in err.message


def test_inserted_entry_is_detected() -> None:
    lines = build()
    i = entry_index(lines, 7)
    lines.insert(i, entry_line(entry(7, key_name="forged")))
    err = code_of(lines)
    assert (err.code, err.index) == (Code.AUDIT_SEQUENCE_INSERTED, 7)


def test_inserted_entry_with_a_future_seq_is_detected() -> None:
    lines = build()
    i = entry_index(lines, 7)
    lines.insert(i, entry_line(entry(30)))
    assert code_of(lines).code == Code.AUDIT_SEQUENCE_INSERTED


def test_reordered_entries_are_detected() -> None:
    lines = build()
    i, j = entry_index(lines, 13), entry_index(lines, 14)
    lines[i], lines[j] = lines[j], lines[i]
    err = code_of(lines)
    assert (err.code, err.line, err.index) == (Code.AUDIT_SEQUENCE_REORDERED, i + 1, 13)


def test_duplicated_entry_is_detected() -> None:
    lines = build()
    i = entry_index(lines, 20)
    lines.insert(i + 1, lines[i])
    err = code_of(lines)
    assert (err.code, err.line, err.index) == (Code.AUDIT_SEQUENCE_DUPLICATE, i + 2, 20)


def test_duplicated_checkpoint_is_detected() -> None:
    lines = build()
    lines.insert(8, lines[7])
    assert lines[7].startswith(b'{"checkpoint":{')
    assert code_of(lines).code == Code.AUDIT_SEQUENCE_DUPLICATE


def test_file_cut_short_is_truncated() -> None:
    lines = build()
    for keep in (len(lines) - 2, len(lines) - 3, 15, 8, 1):
        err = code_of(lines[:keep])
        assert err.code == Code.AUDIT_TRUNCATED, keep


def test_last_entries_removed_before_the_final_checkpoint_is_truncated() -> None:
    lines = build()
    del lines[-3:-1]
    assert code_of(lines).code == Code.AUDIT_TRUNCATED


def test_missing_final_newline_is_detected() -> None:
    lines = build()
    lines[-1] = lines[-1].rstrip(b"\n")
    err = code_of(lines)
    assert (err.code, err.line) == (Code.AUDIT_MALFORMED_EXPORT, len(lines))


def test_entries_after_the_last_checkpoint_are_an_unsigned_tail() -> None:
    lines = build()
    assert code_of(lines[:-1]).code == Code.AUDIT_UNSIGNED_TAIL


def test_entry_beyond_the_header_checkpoint_is_an_unsigned_tail() -> None:
    lines = build()
    err = code_of([*lines, entry_line(entry(40))])
    assert (err.code, err.index) == (Code.AUDIT_UNSIGNED_TAIL, 40)


def test_checkpoint_re_signed_with_another_key_is_detected() -> None:
    other = LocalSigner(key_id="sovereign-audit")
    forged = build(signer=other)
    lines = build()
    lines[7] = forged[7]
    err = code_of(lines)
    assert (err.code, err.line, err.index) == (Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID, 8, 0)
    assert code_of(forged).code == Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID
    assert code_of(forged).line == 1


def test_edited_entry_with_all_checkpoints_re_signed_is_a_signature_error() -> None:
    other = LocalSigner(key_id="sovereign-audit")
    b = ExportBuilder(other)
    body = [b.add(entry(0, key_name="forged")), b.checkpoint(T0)]
    assert code_of([b.header(), *body]).code == Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID


def test_relabelled_key_version_is_detected() -> None:
    lines = build()
    lines[7] = lines[7].replace(b"vault:v1:", b"vault:v2:")
    assert code_of(lines).code == Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID


def test_rolled_back_checkpoint_is_detected() -> None:
    lines = build()
    cps = [i for i, x in enumerate(lines) if i and x.startswith(b'{"checkpoint":{')]
    lines[cps[3]] = lines[cps[1]]
    err = code_of(lines)
    assert (err.code, err.line) == (Code.AUDIT_CHECKPOINT_ROLLBACK, cps[3] + 1)
    lines = build()
    lines[-1] = lines[cps[-2]]  # the final checkpoint replaced by the one before
    assert code_of(lines).code == Code.AUDIT_CHECKPOINT_ROLLBACK


def test_checkpoint_time_going_back_is_a_rollback() -> None:
    b = ExportBuilder(SIGNER)
    body = [b.add(entry(0)), b.checkpoint(T0), b.add(entry(1)), b.checkpoint(T0 - timedelta(seconds=1))]
    err = code_of([b.header(), *body])
    assert (err.code, err.line) == (Code.AUDIT_CHECKPOINT_ROLLBACK, 5)


def test_removed_checkpoint_line_breaks_the_next_consistency_proof() -> None:
    lines = build()
    del lines[7]
    assert code_of(lines).code == Code.AUDIT_CONSISTENCY_INVALID


def test_tampered_consistency_proof_is_detected() -> None:
    lines = build()
    obj = json.loads(lines[14])
    assert obj["consistency"]
    obj["consistency"][0] = "00" * 32
    lines[14] = rfc8785.dumps(obj) + b"\n"
    assert code_of(lines).code == Code.AUDIT_CONSISTENCY_INVALID


def test_header_root_must_match_the_entries() -> None:
    lines = build()
    other = sign_checkpoint(SIGNER, 40, b"\x11" * 32, "2026-03-01T13:00:00.000000Z")
    lines[0] = header_line(other)
    err = code_of(lines)
    assert (err.code, err.line) == (Code.AUDIT_ROOT_MISMATCH, 1)


def test_trusted_checkpoint_catches_an_export_cut_back_to_an_older_checkpoint() -> None:
    full = build()
    latest = Checkpoint.from_obj(json.loads(full[-1])["checkpoint"])
    older = build(n=30)
    assert verify_export(older, KEYS).size == 30
    assert code_of(older, trusted=latest).code == Code.AUDIT_EXPORT_STALE
    assert verify_export(full, KEYS, trusted=latest).size == 40
    mid = sign_checkpoint(SIGNER, 20, b"\x22" * 32, "2026-03-01T13:00:00.000000Z")
    assert code_of(full, trusted=mid).code == Code.AUDIT_ROOT_MISMATCH


def test_without_a_trusted_head_the_report_says_not_fresh() -> None:
    report = verify_export(build(), KEYS)
    assert report.fresh is False and report.to_dict()["fresh"] is False
    assert "checked_against" not in report.to_dict()


def test_a_trusted_checkpoint_or_min_size_makes_the_report_fresh_and_says_with_what() -> None:
    full = build()
    latest = Checkpoint.from_obj(json.loads(full[-1])["checkpoint"])
    report = verify_export(full, KEYS, trusted=latest)
    assert report.fresh is True
    against = report.to_dict()["checked_against"]
    assert against == {"checkpoint": {"size": 40, "root": latest.root.hex(), "time": latest.time}}
    # an older trusted checkpoint (from an earlier run) still vouches the export is at least that new
    earlier = Checkpoint.from_obj(json.loads(full[7])["checkpoint"])
    assert earlier.size < 40 and verify_export(full, KEYS, trusted=earlier).fresh
    pinned = verify_export(full, KEYS, min_size=40, trusted=latest, trusted_source="server_head x")
    assert pinned.to_dict()["checked_against"] == {
        "server_head x": {"size": 40, "root": latest.root.hex(), "time": latest.time},
        "min_size": 40,
    }
    assert verify_export(full, KEYS, min_size=0).fresh


def _rolled_back(n_kept: int, full: list[bytes]) -> list[bytes]:
    """An export cut back to the checkpoint of size ``n_kept``, its header replaced by that checkpoint."""
    at = next(i for i, line in enumerate(full) if line.startswith(b'{"checkpoint":') and i > 0
              and Checkpoint.from_obj(json.loads(line)["checkpoint"]).size == n_kept)  # fmt: skip
    kept = Checkpoint.from_obj(json.loads(full[at])["checkpoint"])
    return [header_line(kept), *full[1 : at + 1]]


def test_a_rolled_back_export_is_caught_by_min_size_and_by_a_newer_trusted_checkpoint() -> None:
    full = build()
    latest = Checkpoint.from_obj(json.loads(full[-1])["checkpoint"])
    rolled = _rolled_back(12, full)
    assert verify_export(rolled, KEYS).size == 12  # on its own it is a valid, older export
    assert code_of(rolled, trusted=latest).code == Code.AUDIT_EXPORT_STALE
    with pytest.raises(ExportInvalid) as info:
        verify_export(rolled, KEYS, min_size=13)
    assert info.value.code == Code.AUDIT_EXPORT_STALE and "13" in info.value.message
    assert verify_export(rolled, KEYS, min_size=12).fresh


def test_a_trusted_checkpoint_must_carry_the_audit_key_signature() -> None:
    full = build()
    latest = Checkpoint.from_obj(json.loads(full[-1])["checkpoint"])
    forged = sign_checkpoint(LocalSigner(key_id="sovereign-audit"), latest.size, latest.root, latest.time)
    assert code_of(full, trusted=forged).code == Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID
    # a forged small checkpoint cannot make a rolled-back export look fresh either
    small = sign_checkpoint(LocalSigner(key_id="sovereign-audit"), 12, latest.root, latest.time)
    assert code_of(_rolled_back(12, full), trusted=small).code == Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID


@pytest.mark.parametrize("bad", [-1, True, "3"])
def test_a_bad_min_size_is_a_coded_error(bad: object) -> None:
    with pytest.raises(ExportInvalid) as info:
        verify_export(build(), KEYS, min_size=bad)  # type: ignore[arg-type]
    assert info.value.code == Code.AUDIT_FRESHNESS_UNCHECKED


def test_unchecked_head_error_is_coded_and_names_the_head() -> None:
    report = verify_export(build(), KEYS)
    err = unchecked_head_error(report)
    assert err.code == Code.AUDIT_FRESHNESS_UNCHECKED and "size 40" in err.message
    assert "--checkpoint" in err.hint and "--accept-unchecked-head" in err.hint


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (b"not json\n", 5),
        (b"\n", 5),
        (b'{"entry":{"seq":0}\n', 5),
        (b'{"other":1}\n', 5),
        (b'{"checkpoint":{"size":"x"}}\n', 5),
        (b"[1,2]\n", 5),
    ],
)
def test_malformed_lines_name_their_line(bad: bytes, where: int) -> None:
    lines = build()
    lines[where - 1] = bad
    err = code_of(lines)
    assert err.line == where
    assert err.code in (Code.AUDIT_MALFORMED_EXPORT, Code.AUDIT_NON_CANONICAL)
    assert f"line {where}" in err.message


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"garbage\n",
        b'{"format":"other","version":1}\n',
        b'{"checkpoint":{},"format":"sovereign-audit-export","version":1}\n',
    ],
)
def test_malformed_header(header: bytes) -> None:
    lines = build()
    lines[0] = header
    err = code_of(lines if header else [])
    assert (err.code, err.line) == (Code.AUDIT_MALFORMED_EXPORT, 1)


def test_wrong_public_key_fails_on_the_header() -> None:
    err = code_of(build(), keys=load_audit_keys(LocalSigner().public_key_bytes()))
    assert (err.code, err.line) == (Code.AUDIT_CHECKPOINT_SIGNATURE_INVALID, 1)


def test_non_canonical_checkpoint_line_is_detected() -> None:
    lines = build()
    lines[7] = lines[7].replace(b'{"checkpoint":{', b'{"checkpoint": {')
    assert code_of(lines).code in (Code.AUDIT_NON_CANONICAL, Code.AUDIT_MALFORMED_EXPORT)
    lines = build()
    lines[7] = lines[7].replace(b"==", b"=") if b"==" in lines[7] else lines[7].replace(b'"size"', b'"size" ')
    assert code_of(lines).line == 8


SMALL = build(n=12, every=4)


@st.composite
def mutations(draw: st.DrawFn) -> list[bytes]:
    lines = list(SMALL)
    op = draw(st.sampled_from(["flip", "insert", "delete", "line_delete", "line_dup", "line_swap"]))
    if op in ("flip", "insert", "delete"):
        i = draw(st.integers(0, len(lines) - 1))
        line = bytearray(lines[i])
        pos = draw(st.integers(0, len(line) - 1))
        if op == "flip":
            line[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            line.insert(pos, draw(st.integers(0, 255)))
        else:
            del line[pos]
        lines[i] = bytes(line)
    else:
        # Deleting a checkpoint line other than the last is allowed by the format (thinning).
        deletable = [i for i, x in enumerate(lines) if i in (0, len(lines) - 1) or x.startswith(b'{"entry":')]
        i = draw(st.sampled_from(deletable if op == "line_delete" else range(len(lines))))
        if op == "line_delete":
            del lines[i]
        elif op == "line_dup":
            lines.insert(i, lines[i])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return lines


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_random_edits_are_always_detected(lines: list[bytes]) -> None:
    if lines == SMALL:
        return
    with pytest.raises(AuditError):
        verify_export(lines, KEYS)
