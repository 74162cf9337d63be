"""The offline provenance verifier (kms/provenance): a genuine statement verifies, and each tamper is
refused with its own code. Statements are built over an in-memory ledger signed with local Ed25519 keys
(tests/unit/provenance_ledger.py); tampering edits the envelope's JSON the way an attacker would."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from provenance_ledger import CLAIMS, NODE, OUTPUT, SEALED, Ledger, training_ledger

from kms.audit.checkpoint import Checkpoint, LocalSigner, sign_checkpoint
from kms.audit.entry import Decision, Kind
from kms.audit.merkle import consistency_proof
from kms.provenance.errors import ProvenanceCode as C
from kms.provenance.errors import ProvenanceError
from kms.provenance.lineage import LineageInvalid
from kms.provenance.statement import claims_digest
from kms.provenance.verify import (
    StatementVerifier,
    TrustedCheckpoint,
    Verified,
    lineage_text,
    verify_statement,
)
from sovereign.cli import main


def edit(envelope: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Change the statement inside the envelope without re-signing it."""
    doc = json.loads(envelope)
    statement = json.loads(base64.b64decode(doc["payload"]))
    change(statement)
    doc["payload"] = base64.b64encode(rfc8785.dumps(statement)).decode()
    return json.dumps(doc).encode()


def code_of(envelope: bytes, led: Ledger, **kw: Any) -> C:
    """The refusal's code, the same from a fresh verifier and from one that has just verified the ledger's
    statements (what a verifier remembers between statements must never let a tampered one through)."""
    with pytest.raises(ProvenanceError) as info:
        verify_statement(envelope, led.keys(), **kw)
    warm = StatementVerifier(led.keys(), trusted=kw.get("trusted"))
    warm.verify_all(led.issued)
    with pytest.raises(ProvenanceError) as again:
        warm.verify(envelope, file_sha256=kw.get("file_sha256"))
    assert again.value.code is info.value.code
    return info.value.code


@pytest.fixture
def world() -> tuple[Ledger, int, bytes]:
    led, out = training_ledger(datasets=2)
    return led, out, led.statement(out)


def test_a_genuine_statement_verifies_and_names_its_lineage(world: tuple[Ledger, int, bytes]) -> None:
    led, out, envelope = world
    verified = verify_statement(envelope, led.keys(), file_sha256=OUTPUT)
    assert verified.subject_sha256 == (OUTPUT, SEALED)
    p = verified.predicate
    assert [(d["key"], d["version"]) for d in p["datasets"]] == [("dataset/d0", 1), ("dataset/d1", 1)]
    assert p["write_grant"]["key"] == "model/main" and p["write_grant"]["version"] == 3
    assert p["node"] == {"id": NODE, "name": "trainer-1"}
    assert p["cpu"]["chip_id"] == CLAIMS["platform_id"] and p["cpu"]["debug"] is False
    assert p["policy"] == {"version": 2, "digest": "ef" * 32, "sequence": 2}
    assert p["output"]["sequence"] == out and p["output"]["job"] == "train" and p["output"]["step"] == 10
    assert p["signer"] == {"key": "sovereign-provenance", "version": 1}
    text = "\n".join(lineage_text(verified))
    assert "dataset/d0 v1" in text and "trainer-1" in text and OUTPUT in text
    # the sealed file's digest is a subject too
    assert verify_statement(envelope, led.keys(), file_sha256=SEALED).lineage == verified.lineage


def test_a_changed_subject_is_refused(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world

    def change(s: dict[str, Any]) -> None:
        s["subject"][0]["digest"]["sha256"] = "00" * 32

    assert code_of(edit(envelope, change), led) is C.PROVENANCE_SUBJECT_MISMATCH


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["datasets"].pop(0),  # hide a dataset
        lambda p: p["node"].update(name="someone-else"),
        lambda p: p["cpu"].update(measurement="00" * 48),
        lambda p: p["cpu"].update(chip_id="00" * 64),  # against the verified claims
        lambda p: p["cpu"]["claims"].update(debug=True),  # claims no longer match the registration digest
        lambda p: p["policy"].update(digest="00" * 32),
        lambda p: p["output"].update(step=11),
    ],
    ids=["dataset-hidden", "node-name", "measurement", "chip-id", "claims", "policy", "step"],
)
def test_an_edited_predicate_is_refused(
    world: tuple[Ledger, int, bytes], change: Callable[[Any], None]
) -> None:
    led, _, envelope = world
    assert code_of(edit(envelope, lambda s: change(s["predicate"])), led) is C.PROVENANCE_PREDICATE_MISMATCH


def test_a_proof_for_another_entry_is_refused(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world

    def swap(s: dict[str, Any]) -> None:
        entries = s["predicate"]["ledger"]["entries"]
        entries[0]["proof"], entries[1]["proof"] = entries[1]["proof"], entries[0]["proof"]

    assert code_of(edit(envelope, swap), led) is C.PROVENANCE_PROOF_INVALID


def test_an_entry_swapped_for_another_is_refused(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world

    def swap(s: dict[str, Any]) -> None:  # a dataset grant's bytes replaced by the server.start entry's
        entries = s["predicate"]["ledger"]["entries"]
        entries[1]["entry"] = led.entries[0].encode().decode()

    assert code_of(edit(envelope, swap), led) is C.PROVENANCE_MALFORMED


def test_a_rolled_back_checkpoint_is_refused(world: tuple[Ledger, int, bytes]) -> None:
    led, out, _ = world
    older = led.checkpoints[0]
    led.add(Kind.SERVER_STOP, Decision.NONE)
    newer = led.checkpoint()
    fresh = led.statement(out, newer)
    assert verify_statement(fresh, led.keys()).checkpoint.size == newer.size
    # a genuine, signed, but older checkpoint: from before the output it is said to cover
    before_output = Ledger(led.audit_key, led.provenance_key)
    for e in led.entries[:out]:
        before_output.add(e.kind, e.decision, **dict(e.fields))
    stale = before_output.checkpoint()
    assert stale.size <= out and older.size > out

    def roll_back(s: dict[str, Any]) -> None:
        s["predicate"]["ledger"]["checkpoint"] = stale.to_obj()

    assert code_of(edit(fresh, roll_back), led) is C.PROVENANCE_CHECKPOINT_ROLLBACK


def test_an_envelope_re_signed_with_another_key_is_refused(world: tuple[Ledger, int, bytes]) -> None:
    led, out, _ = world
    forged = led.statement(out, signer=Ed25519PrivateKey.generate())
    assert code_of(forged, led) is C.PROVENANCE_SIGNATURE_INVALID


def test_an_unsigned_edit_the_ledger_cannot_see_is_refused_by_the_signature(
    world: tuple[Ledger, int, bytes],
) -> None:
    led, _, envelope = world
    assert (
        code_of(edit(envelope, lambda s: s["predicate"].update(issued_at="x")), led)
        is C.PROVENANCE_SIGNATURE_INVALID
    )


def test_a_statement_for_a_revoked_nodes_grant_after_its_revocation_is_refused() -> None:
    led, out = training_ledger(datasets=1, revoke_before_output=True)
    envelope = led.statement(out)  # signed with the genuine keys: only the lineage is wrong
    assert code_of(envelope, led) is C.PROVENANCE_GRANT_AFTER_REVOCATION


def test_a_revocation_after_the_output_does_not_void_the_statement() -> None:
    led, out = training_ledger(datasets=1)
    led.add(Kind.NODE_REVOKE, Decision.NONE, node_id=NODE, old_state="attested", new_state="revoked")
    verified = verify_statement(led.statement(out), led.keys())
    assert [r["sequence"] for r in verified.predicate["revocations"]] == [out + 1]


def test_a_checkpoint_with_a_bad_signature_is_refused(world: tuple[Ledger, int, bytes]) -> None:
    _, _, envelope = world
    other = Ledger()
    assert code_of(envelope, other) is C.PROVENANCE_CHECKPOINT_SIGNATURE_INVALID


def test_consistency_with_a_trusted_newer_checkpoint(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world
    mine = led.checkpoints[-1]
    for _ in range(5):
        led.add(Kind.SERVER_STOP, Decision.NONE)
    newer = led.checkpoint()
    proof = tuple(consistency_proof(led.store, mine.size, newer.size))
    assert verify_statement(envelope, led.keys(), trusted=TrustedCheckpoint(newer, proof))
    # a trusted checkpoint of a forked ledger (same size, other root) is refused
    fork = Ledger(led.audit_key, led.provenance_key)
    for e in led.entries[: mine.size - 1]:
        fork.add(e.kind, e.decision, **dict(e.fields))
    fork.add(Kind.SERVER_STOP, Decision.NONE)
    forked = fork.checkpoint()
    assert forked.size == mine.size and forked.root != mine.root
    assert code_of(envelope, led, trusted=TrustedCheckpoint(forked)) is C.PROVENANCE_CONSISTENCY_INVALID
    assert (
        code_of(envelope, led, trusted=TrustedCheckpoint(newer, proof[1:]))
        is C.PROVENANCE_CONSISTENCY_INVALID
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", json.dumps({"payload": "", "payloadType": "x", "signatures": []}).encode()],
)
def test_malformed_input_is_a_coded_refusal(world: tuple[Ledger, int, bytes], data: bytes) -> None:
    led, _, _ = world
    assert code_of(data, led) is C.PROVENANCE_MALFORMED


def test_a_statement_of_another_type_is_malformed(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world
    assert code_of(edit(envelope, lambda s: s.update(_type="https://in-toto.io/Statement/v0.1")), led) is (
        C.PROVENANCE_MALFORMED
    )
    assert code_of(edit(envelope, lambda s: s["subject"][0].update(digest={})), led) is C.PROVENANCE_MALFORMED


def test_the_file_must_be_the_subject(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world
    assert code_of(envelope, led, file_sha256="00" * 32) is C.PROVENANCE_FILE_MISMATCH


def test_cli_verify_prints_the_lineage_and_refuses_a_tampered_copy(
    world: tuple[Ledger, int, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    led, _, envelope = world
    keys = led.key_files(tmp_path / "keys")
    good = tmp_path / "statement.json"
    good.write_bytes(envelope)
    assert main(["provenance", "verify", str(good), "--public-keys", str(keys)]) == 0
    out = capsys.readouterr().out
    assert "statement verified" in out and "dataset/d1 v1" in out and "trainer-1" in out
    bad = tmp_path / "tampered.json"
    bad.write_bytes(edit(envelope, lambda s: s["predicate"]["datasets"].pop()))
    assert main(["provenance", "verify", str(bad), "--public-keys", str(keys), "--json"]) == 1
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is False and reply["error"]["code"] == "PROVENANCE_PREDICATE_MISMATCH"
    assert main(["provenance", "verify", str(good), "--public-keys", str(tmp_path / "missing")]) == 1
    assert "PROVENANCE_KEYS_INVALID" in capsys.readouterr().err


def test_a_node_an_operator_approved_has_its_approval_in_the_lineage() -> None:
    led = Ledger()
    reg = led.add(
        Kind.REGISTRATION, Decision.NONE, node_id=NODE, node_name="trainer-2", tee="snp", state="pending",
        policy_version=1, claims_digest=claims_digest(CLAIMS), measurement=CLAIMS["measurement"],
        tcb_status="UpToDate",
    )  # fmt: skip
    approve = led.add(Kind.NODE_APPROVE, Decision.NONE, node_id=NODE, old_state="pending", new_state="attested",
                      policy_version=1, subject="alice")  # fmt: skip
    led.add(Kind.RELEASE_GRANT, node_id=NODE, key_name="model/main", key_version=1, purpose="write",
            policy_version=1, request_id="a" * 32)  # fmt: skip
    out = led.add(Kind.MODEL_OUTPUT, node_id=NODE, key_name="model/main", key_version=1, request_id="b" * 32,
                  header_sha256="11" * 32, output_sha256=OUTPUT, output_size=1, sealed_sha256=SEALED)  # fmt: skip
    verified = verify_statement(led.statement(out), led.keys())
    assert verified.predicate["cpu"]["registrations"] == [reg]
    assert verified.predicate["cpu"]["approvals"] == [approve]
    assert verified.predicate["datasets"] == [] and verified.predicate["policy"]["digest"] is None


def test_a_node_without_verified_evidence_has_no_lineage() -> None:
    led = Ledger()
    led.add(Kind.REGISTRATION, Decision.DENY, node_id=NODE, node_name="x", tee="snp", state="rejected",
            policy_version=1)  # fmt: skip
    led.add(Kind.RELEASE_GRANT, node_id=NODE, key_name="model/main", key_version=1, purpose="write",
            policy_version=1, request_id="a" * 32)  # fmt: skip
    out = led.add(Kind.MODEL_OUTPUT, node_id=NODE, key_name="model/main", key_version=1, request_id="b" * 32,
                  header_sha256="11" * 32, output_sha256=OUTPUT, output_size=1, sealed_sha256=SEALED)  # fmt: skip
    with pytest.raises(LineageInvalid):
        led.statement(out)


def test_cli_verify_with_a_trusted_checkpoint_file(
    world: tuple[Ledger, int, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    led, _, envelope = world
    mine = led.checkpoints[-1]
    led.add(Kind.SERVER_STOP, Decision.NONE)
    newer = led.checkpoint()
    keys = led.key_files(tmp_path / "keys")
    statement = tmp_path / "statement.json"
    statement.write_bytes(envelope)
    trusted = tmp_path / "trusted.json"
    proof = [h.hex() for h in consistency_proof(led.store, mine.size, newer.size)]
    trusted.write_text(json.dumps({"checkpoint": newer.to_obj(), "consistency": proof}))
    args = ["provenance", "verify", str(statement), "--public-keys", str(keys), "--checkpoint", str(trusted)]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"]["size"] == mine.size
    trusted.write_text(json.dumps({"checkpoint": newer.to_obj()}))  # no proof for a bigger tree
    assert main([*args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "PROVENANCE_CONSISTENCY_INVALID"
    trusted.write_text("{not json")
    assert main([*args, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "PROVENANCE_MALFORMED"


def _resign_checkpoint(envelope: bytes, key: Ed25519PrivateKey) -> bytes:
    """The same checkpoint (size, root, time, key id, version) signed by ``key``, statement unchanged."""
    statement = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    cp = Checkpoint.from_obj(statement["predicate"]["ledger"]["checkpoint"])
    signer = LocalSigner(key, key_id=cp.key_id, version=cp.signature.version)
    other = sign_checkpoint(signer, cp.size, cp.root, cp.time)

    def change(s: dict[str, Any]) -> None:
        s["predicate"]["ledger"]["checkpoint"] = other.to_obj()

    return edit(envelope, change)


def test_a_remembered_checkpoint_does_not_pass_a_broken_or_foreign_signature(
    world: tuple[Ledger, int, bytes],
) -> None:
    led, out, envelope = world
    verifier = StatementVerifier(led.keys())
    assert verifier.verify(envelope).checkpoint.size == led.checkpoints[-1].size

    def flip(s: dict[str, Any]) -> None:  # the genuine checkpoint, one bit of its signature flipped
        cp = s["predicate"]["ledger"]["checkpoint"]
        head, _, sig = cp["signature"].rpartition(":")
        raw_sig = bytearray(base64.b64decode(sig))
        raw_sig[7] ^= 1
        cp["signature"] = f"{head}:{base64.b64encode(bytes(raw_sig)).decode()}"

    broken = edit(envelope, flip)
    foreign = _resign_checkpoint(envelope, Ed25519PrivateKey.generate())
    for tampered in (broken, foreign):
        with pytest.raises(ProvenanceError) as info:
            verifier.verify(tampered)
        assert info.value.code is C.PROVENANCE_CHECKPOINT_SIGNATURE_INVALID
    # the same checkpoint re-signed by the genuine key is still the genuine checkpoint
    assert verifier.verify(_resign_checkpoint(envelope, led.audit_key), file_sha256=OUTPUT)
    # and the statement's own DSSE signature is checked every time
    assert code_of(led.statement(out, led.checkpoints[-1], signer=Ed25519PrivateKey.generate()), led) is (
        C.PROVENANCE_SIGNATURE_INVALID
    )


def test_a_verifier_remembers_nothing_across_keys(world: tuple[Ledger, int, bytes]) -> None:
    led, _, envelope = world
    assert StatementVerifier(led.keys()).verify(envelope)
    with pytest.raises(ProvenanceError) as info:
        StatementVerifier(Ledger().keys()).verify(envelope)
    assert info.value.code is C.PROVENANCE_CHECKPOINT_SIGNATURE_INVALID


def test_a_batch_gives_one_result_per_statement_in_order() -> None:
    led, first = training_ledger(datasets=3)
    template = dict(led.entries[first].fields)
    second = led.add(Kind.MODEL_OUTPUT, **{**template, "step": 11, "request_id": "d" * 32,
                                           "output_sha256": "12" * 32})  # fmt: skip
    checkpoint = led.checkpoint()
    a, b = led.statement(first, checkpoint), led.statement(second, checkpoint)
    hidden = edit(b, lambda s: s["predicate"]["datasets"].pop())
    results = StatementVerifier(led.keys()).verify_all([a, hidden, b, b"{}"])
    assert isinstance(results[0], Verified) and results[0].predicate["output"]["sequence"] == first
    assert isinstance(results[1], ProvenanceError) and results[1].code is C.PROVENANCE_PREDICATE_MISMATCH
    assert isinstance(results[2], Verified) and results[2].subject_sha256[0] == "12" * 32
    assert isinstance(results[3], ProvenanceError) and results[3].code is C.PROVENANCE_MALFORMED
    # the two genuine statements share every entry but their output: both are about the same datasets
    assert results[0].predicate["datasets"] == results[2].predicate["datasets"]


def test_cli_verify_a_directory_gives_one_result_per_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    led, first = training_ledger(datasets=2)
    template = dict(led.entries[first].fields)
    second = led.add(Kind.MODEL_OUTPUT, **{**template, "step": 11, "request_id": "d" * 32,
                                           "output_sha256": "12" * 32})  # fmt: skip
    checkpoint = led.checkpoint()
    keys = led.key_files(tmp_path / "keys")
    batch = tmp_path / "statements"
    batch.mkdir()
    (batch / "a.json").write_bytes(led.statement(first, checkpoint))
    (batch / "b.json").write_bytes(led.statement(second, checkpoint))
    assert main(["provenance", "verify", str(batch), "--public-keys", str(keys), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is True and (reply["verified"], reply["refused"]) == (2, 0)
    assert [r["subject"]["sha256"] for r in reply["statements"]] == [OUTPUT, "12" * 32]
    (batch / "c.json").write_bytes(
        _resign_checkpoint((batch / "a.json").read_bytes(), Ed25519PrivateKey.generate())
    )
    files = [str(batch / n) for n in ("a.json", "c.json", "b.json")]
    assert main(["provenance", "verify", *files, "--public-keys", str(keys), "--json"]) == 1
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is False and [r["ok"] for r in reply["statements"]] == [True, False, True]
    assert reply["statements"][1]["error"]["code"] == "PROVENANCE_CHECKPOINT_SIGNATURE_INVALID"
    assert reply["statements"][1]["file"] == files[1]
    assert main(["provenance", "verify", *files, "--public-keys", str(keys)]) == 1
    text = capsys.readouterr().out
    assert "2 verified, 1 refused" in text and "REFUSED" in text and "c.json" in text
    # --file names one output: with a batch it is a usage error, not a silent skip
    args = ["provenance", "verify", str(batch), "--public-keys", str(keys), "--file", files[0], "--json"]
    assert main(args) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "USAGE_INVALID"
