"""``sovereign audit verify``: exit codes and output for a clean export, a tampered one, and one cut back
to an older signed checkpoint (freshness: --checkpoint, --min-size, --accept-unchecked-head)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.audit.checkpoint import Checkpoint, LocalSigner, sign_checkpoint
from kms.audit.entry import Entry, Kind
from kms.audit.export import ExportBuilder, header_line
from sovereign.cli import main

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def fresh(args: list[str]) -> list[str]:
    """A verify command line with a pinned minimum size: the clean export has 10 entries."""
    return [*args, "--min-size", "10"]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, list[bytes]]:
    signer = LocalSigner(key_id="sovereign-audit")
    b = ExportBuilder(signer)
    body = []
    for i in range(10):
        body.append(b.add(Entry.create(i, T0, Kind.SERVER_START, actor="system").encode()))
        if i in (4, 9):
            body.append(b.checkpoint(T0 + timedelta(seconds=i)))
    lines = [b.header(), *body]
    export, key = tmp_path / "audit.jsonl", tmp_path / "audit.pub"
    export.write_bytes(b"".join(lines))
    public = Ed25519PublicKey.from_public_bytes(signer.public_key_bytes())
    key.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return export, key, lines


def test_clean_export_exits_zero(
    files: tuple[Path, Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key, _ = files
    assert main(fresh(["audit", "verify", str(export), "--public-key", str(key)])) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK 10 entries, 2 checkpoints, final size 10, root ")
    assert "fresh: holds at least 10 entries (min_size)" in out
    assert main(fresh(["audit", "verify", str(export), "--public-key", str(key), "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["entries"], out["size"], out["key_id"]) == (True, 10, 10, "sovereign-audit")
    assert (out["fresh"], out["checked_against"]) == (True, {"min_size": 10})


def test_tampered_export_exits_one_with_code_and_line(
    files: tuple[Path, Path, list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    export, key, lines = files
    del lines[3]
    export.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(export), "--public-key", str(key), "--json"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert (err["code"], err["line"], err["index"]) == ("AUDIT_SEQUENCE_GAP", "4", "2")
    assert main(["audit", "verify", str(export), "--public-key", str(key)]) == 1
    assert "error: AUDIT_SEQUENCE_GAP: line 4" in capsys.readouterr().err


def test_unreadable_inputs_are_coded_errors(
    files: tuple[Path, Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export, key, _ = files
    assert main(["audit", "verify", str(tmp_path / "missing"), "--public-key", str(key)]) == 1
    assert "AUDIT_MALFORMED_EXPORT" in capsys.readouterr().err
    assert main(["audit", "verify", str(export), "--public-key", str(tmp_path / "nokey")]) == 1
    assert "AUDIT_KEY_INVALID" in capsys.readouterr().err


def test_runs_as_a_command(files: tuple[Path, Path, list[bytes]]) -> None:
    export, key, _ = files
    done = subprocess.run(
        fresh([sys.executable, "-m", "sovereign", "audit", "verify", str(export), "--public-key", str(key)]),
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK 10 entries")


def _ledger_with_a_revocation(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """The review's attack: a ledger 0..3 where entry 2 revokes a node and entry 3 is a later grant,
    checkpoints at sizes 2 and 4. Returns the full export, the rolled-back export (entries 0-1 under the
    checkpoint of size 2, header included), the latest checkpoint saved apart, and the key."""
    signer = LocalSigner(key_id="sovereign-audit")
    b = ExportBuilder(signer, with_proofs=True)
    kinds = [(Kind.SERVER_START, "system"), (Kind.NODE_APPROVE, "alice"), (Kind.NODE_REVOKE, "alice"),
             (Kind.KEY_CREATE, "alice")]  # fmt: skip
    body: list[bytes] = []
    for i, (kind, actor) in enumerate(kinds):
        body.append(b.add(Entry.create(i, T0 + timedelta(seconds=i), kind, actor=actor).encode()))
        if i in (1, 3):
            body.append(b.checkpoint(T0 + timedelta(seconds=10 + i)))
    full = [b.header(), *body]
    cut = body.index(next(line for line in body if line.startswith(b'{"checkpoint":')))
    older = Checkpoint.from_obj(json.loads(body[cut])["checkpoint"])
    assert older.size == 2
    rolled = [header_line(older), *body[: cut + 1]]
    names = ("full.jsonl", "rolled.jsonl", "latest.json", "audit.pub")
    paths = (tmp_path / names[0], tmp_path / names[1], tmp_path / names[2], tmp_path / names[3])
    paths[0].write_bytes(b"".join(full))
    paths[1].write_bytes(b"".join(rolled))
    latest = json.loads(full[-1])["checkpoint"]
    paths[2].write_text(json.dumps({"checkpoint": latest}))
    paths[3].write_bytes(signer.public_key_bytes())
    return paths


def test_export_cut_back_to_an_older_checkpoint_never_prints_a_plain_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full, rolled, latest, key = _ledger_with_a_revocation(tmp_path)
    base = ["audit", "verify", str(rolled), "--public-key", str(key)]
    # no trusted head: refused, with the code, and the JSON says fresh: false
    assert main(base) == 1
    captured = capsys.readouterr()
    assert not captured.out.startswith("OK") and "AUDIT_FRESHNESS_UNCHECKED" in captured.err
    assert main([*base, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["fresh"], out["size"]) == (False, False, 2)
    assert out["error"]["code"] == "AUDIT_FRESHNESS_UNCHECKED"
    # accepted explicitly: exit 0, but never a plain OK and still fresh: false
    assert main([*base, "--accept-unchecked-head"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("VERIFIED, FRESHNESS NOT CHECKED") and "warning" in captured.err
    assert main([*base, "--accept-unchecked-head", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["fresh"]) == (True, False) and "checked_against" not in out
    # a newer trusted checkpoint (signature checked with the audit key) or a pinned size catches it
    assert main([*base, "--checkpoint", str(latest), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["code"] == "AUDIT_EXPORT_STALE"
    assert main([*base, "--min-size", "4", "--accept-unchecked-head", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "AUDIT_EXPORT_STALE"
    # the full export against the same checkpoint is fresh
    assert (
        main(["audit", "verify", str(full), "--public-key", str(key), "--checkpoint", str(latest), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["ok"], out["fresh"], out["checked_against"]["checkpoint"]["size"]) == (True, True, 4)


def test_a_checkpoint_file_signed_by_another_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, rolled, latest, key = _ledger_with_a_revocation(tmp_path)
    cp = Checkpoint.from_obj(json.loads(latest.read_text())["checkpoint"])
    forged = sign_checkpoint(LocalSigner(key_id="sovereign-audit"), 2, cp.root, cp.time)
    latest.write_text(json.dumps(forged.to_obj()))
    assert main(["audit", "verify", str(rolled), "--public-key", str(key), "--checkpoint", str(latest)]) == 1
    assert "AUDIT_CHECKPOINT_SIGNATURE_INVALID" in capsys.readouterr().err


def test_remote_actions_say_an_expired_sign_in_before_calling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    from kms.oidc.cache import CachedToken, save_token

    cache = tmp_path / "token.json"
    then = datetime.now(UTC) - timedelta(hours=2)
    save_token(CachedToken("https://idp.invalid", "sovereign", "sovereign", "t0ken", then, then), cache)
    # nothing listens on port 9: the refusal comes before any call
    conn = ["--server", "127.0.0.1:9", "--insecure", "--token-cache", str(cache), "--json"]
    assert main(["audit", "tail", *conn]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "AUTH_TOKEN_EXPIRED" and "sovereign login" in error["hint"]
    assert "t0ken" not in json.dumps(error)


def test_server_head_failures_are_coded_and_never_ok(
    files: tuple[Path, Path, list[bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kms.oidc.cache import CachedToken, save_token

    export, key, _ = files
    base = ["audit", "verify", str(export), "--public-key", str(key), "--server-head", "--json"]
    cache = tmp_path / "token.json"
    then = datetime.now(UTC) - timedelta(hours=2)
    save_token(CachedToken("https://idp.invalid", "sovereign", "sovereign", "t0ken", then, then), cache)
    conn = ["--server", "127.0.0.1:9", "--token-cache", str(cache)]
    assert main([*base, *conn, "--ca", str(tmp_path / "no-ca.pem")]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "TLS_CA_INVALID"
    assert main([*base, *conn, "--insecure"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["error"]["code"] == "AUTH_TOKEN_EXPIRED"
    assert main([*base, *conn, "--checkpoint", str(key)]) == 2


def test_the_table_names_who_acted_and_which_node(capsys: pytest.CaptureFixture[str]) -> None:
    from sovereign.cli.audit import _print

    rows = [
        {"seq": 1, "time": "t1", "kind": "registration", "decision": "grant", "actor": "node", "node_id": "0f3a9c77",
         "key_name": "", "reasons": "", "fields": {"node_name": "trainer-1"}},
        {"seq": 2, "time": "t2", "kind": "node.approve", "decision": "grant", "actor": "5b1e-uuid",
         "node_id": "0f3a9c77", "key_name": "", "reasons": "", "fields": {"username": "alice", "subject": "5b1e-uuid"}},
    ]  # fmt: skip
    _print(rows, False, {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "KIND", "DECISION", "WHO", "NODE", "KEY_NAME", "REASONS"]
    assert "alice" in lines[2] and "5b1e-uuid" not in lines[2]
    assert "trainer-1 (0f3a9c77)" in lines[2]
    _print(rows, True, {})
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and [e["actor"] for e in doc["entries"]] == ["node", "5b1e-uuid"]
