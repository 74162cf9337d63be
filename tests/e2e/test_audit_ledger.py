"""The audit ledger end to end, against the real server process and real OpenBao: SNP and TDX nodes get
keys and refusals, the CLI exports the ledger over the Audit RPCs and ``sovereign audit verify`` checks
it offline with only the public key; every kind of tamper is detected; inclusion and consistency proofs
check out; SIGKILL during a concurrent release storm never loses a grant a client received; OpenBao's
audit log reconciles with the ledger, and a decrypt made with the AppRole outside the server is flagged."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import hvac
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from e2e.conftest import KIND
from e2e.node_client import NodeClient, rpc_error
from e2e.world import KEYS, ROOT, SNP_MEASUREMENT, TDX_MRTD, Bao, ServerProcess, prepare, start_bao

from attestation.simulate import SimulatedPki
from enclave.providers.simulated import simulated_snp, simulated_tdx
from kms.audit.checkpoint import LocalSigner, load_audit_keys, sign_checkpoint
from kms.audit.entry import Entry, Kind
from kms.audit.errors import ExportInvalid
from kms.audit.export import checkpoint_line, header_line, parse_checkpoint_line, parse_header
from kms.audit.verify import verify_export
from kms.oidc.cache import CachedToken, save_token
from kms.openbao.vault import AppRoleAuth, BaoSettings, OpenBaoTransit
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2
from sovereign.bundle.installer import key_fingerprint

AUDITOR = "carol"


def sovereign(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("audit-e2e")
    proc = ServerProcess(workdir, prepare(workdir, pki, datetime.now(UTC)), bao).start()
    try:
        with proc.admin_channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for name, kind in KEYS.items():
                admin.CreateKey(admin_pb2.CreateKeyRequest(name=name, kind=KIND[kind]))
        yield proc
    finally:
        proc.stop()


def nodes(world: ServerProcess, pki: SimulatedPki) -> list[NodeClient]:
    out = [
        NodeClient(world.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="audit-snp"),
        NodeClient(world.channel(), simulated_tdx(pki, mrtd=TDX_MRTD), name="audit-tdx"),
    ]
    for node in out:
        assert node.register(requested_groups=["trainers"]).state == common_pb2.NODE_STATE_ATTESTED
    return out


def public_key_file(bao: Bao, path: Path) -> Path:
    client = hvac.Client(url=bao.server.addr, token=bao.server.root_token)
    path.write_text(json.dumps(client.secrets.transit.read_key("sovereign-audit")))
    return path


def cli_token(world: ServerProcess, path: Path) -> list[str]:
    """Connection arguments for the audit CLI, signed in as the auditor (a cached token, as after
    'sovereign login')."""
    now = datetime.now(UTC)
    token = CachedToken("https://keycloak.invalid", "sovereign", "sovereign", world.realm.token(AUDITOR),
                        now + timedelta(minutes=5), now)  # fmt: skip
    save_token(token, path)
    assert world.ca is not None
    return ["--server", f"127.0.0.1:{world.admin_port}", "--ca", str(world.ca), "--token-cache", str(path)]


def audit_stub(world: ServerProcess) -> audit_pb2_grpc.AuditStub:
    return audit_pb2_grpc.AuditStub(world.admin_channel(AUDITOR))


def wait_for_checkpoint(stub: audit_pb2_grpc.AuditStub, size: int) -> audit_pb2.SignedCheckpoint:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            cp = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest())
            if cp.tree_size >= size:
                return cp
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint reached size {size} within 10 s")


def test_traffic_export_verify_proofs_and_query(
    world: ServerProcess, pki: SimulatedPki, bao: Bao, tmp_path: Path
) -> None:
    snp, tdx = nodes(world, pki)
    _, granted = snp.release("dataset/train")
    _, also = tdx.release("model/main", "write")
    status, code, detail = rpc_error(
        tdx.release_stub.ReleaseKey, tdx.release_request("dataset/train", purpose="write")
    )
    assert code == "RELEASE_PURPOSE_NOT_ALLOWED" and status == grpc.StatusCode.PERMISSION_DENIED
    deny_seq = int(detail.metadata["denial_id"])
    stub = audit_stub(world)
    wait_for_checkpoint(stub, deny_seq + 1)
    # list with filters: the refusal is there with its reason
    denied = stub.ListEntries(
        audit_pb2.ListEntriesRequest(node_id=tdx.node_id, decision=audit_pb2.DECISION_DENY)
    )
    assert [e.sequence for e in denied.entries] == [deny_seq]
    assert denied.entries[0].reasons[0].code == "RELEASE_PURPOSE_NOT_ALLOWED"
    grants = stub.ListEntries(
        audit_pb2.ListEntriesRequest(decision=audit_pb2.DECISION_GRANT, key_name="dataset/train")
    )
    assert granted.audit_sequence in [e.sequence for e in grants.entries]
    registrations = [
        e
        for e in stub.ListEntries(audit_pb2.ListEntriesRequest(node_id=snp.node_id)).entries
        if e.event == "registration"
    ]
    assert registrations and Entry.decode(registrations[0].canonical).fields["claims_digest"]
    # the CLI: export, verify offline with only the public key, proofs, query
    conn = cli_token(world, tmp_path / "token.json")
    export, key = tmp_path / "audit.jsonl", public_key_file(bao, tmp_path / "audit-key.json")
    head = tmp_path / "head.json"  # the head seen before exporting: the export must reach it
    saved = sovereign("audit", "checkpoint", "-o", str(head), "--json", *conn)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    done = sovereign("audit", "export", "-o", str(export), "--json", *conn)
    assert done.returncode == 0, done.stdout + done.stderr
    unchecked = sovereign("audit", "verify", str(export), "--public-key", str(key), "--json")
    assert unchecked.returncode == 1 and json.loads(unchecked.stdout)["fresh"] is False
    verified = sovereign(
        "audit", "verify", str(export), "--public-key", str(key), "--checkpoint", str(head), "--json"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    size = json.loads(verified.stdout)["size"]
    assert size > deny_seq and json.loads(verified.stdout)["fresh"] is True
    lines = export.read_bytes().splitlines(keepends=True)
    seqs = {
        Entry.decode(line[9:-2]).seq: Entry.decode(line[9:-2])
        for line in lines[1:]
        if line.startswith(b'{"entry":')
    }
    assert seqs[granted.audit_sequence].kind is Kind.RELEASE_GRANT
    assert seqs[also.audit_sequence].fields["purpose"] == "write"
    proof = sovereign(
        "audit", "proof", "--leaf", str(granted.audit_sequence), "--public-key", str(key), "--json", *conn
    )
    assert proof.returncode == 0 and json.loads(proof.stdout)["kind"] == "inclusion", (
        proof.stdout + proof.stderr
    )
    first = parse_checkpoint_line(next(line for line in lines[1:] if line.startswith(b'{"checkpoint":')), 2)[
        0
    ]
    consistency = sovereign(
        "audit", "proof", "--first", str(first.size), "--public-key", str(key), "--json", *conn
    )
    assert consistency.returncode == 0, consistency.stdout + consistency.stderr
    query = sovereign("audit", "query", "--node", tdx.node_id, "--decision", "deny", "--json", *conn)
    assert [r["seq"] for r in json.loads(query.stdout)["entries"]] == [deny_seq]
    tail = sovereign("audit", "tail", "-n", "3", *conn)
    assert tail.returncode == 0 and "SEQ" in tail.stdout


def _tampers(lines: list[bytes]) -> dict[str, tuple[list[bytes], str]]:
    entries = [i for i, line in enumerate(lines) if line.startswith(b'{"entry":')]
    cps = [i for i, line in enumerate(lines) if i > 0 and line.startswith(b'{"checkpoint":')]  # 0: header
    a, b = entries[2], entries[3]
    edited = lines[a].replace(b'"actor":"', b'"actor":"x', 1)
    other = LocalSigner(key_id="sovereign-audit", version=parse_header(lines[0]).signature.version)

    def resigned() -> list[bytes]:
        out = list(lines)
        for i in [0, *cps]:
            cp = parse_header(out[0]) if i == 0 else parse_checkpoint_line(out[i], i + 1)[0]
            forged = sign_checkpoint(other, cp.size, cp.root, cp.time)
            out[i] = header_line(forged) if i == 0 else checkpoint_line(forged)
        return out

    rolled = list(lines)
    rolled[cps[-1]] = checkpoint_line(parse_checkpoint_line(lines[cps[0]], cps[0] + 1)[0])
    return {
        "edited": ([*lines[:a], edited, *lines[a + 1 :]], "AUDIT_ROOT_MISMATCH"),
        "deleted": ([*lines[:a], *lines[a + 1 :]], "AUDIT_SEQUENCE_GAP"),
        "inserted": ([*lines[:a], edited, *lines[a:]], "AUDIT_SEQUENCE_INSERTED"),
        "reordered": ([*lines[:a], lines[b], lines[a], *lines[b + 1 :]], "AUDIT_SEQUENCE_REORDERED"),
        "duplicated": ([*lines[: a + 1], lines[a], *lines[a + 1 :]], "AUDIT_SEQUENCE_DUPLICATE"),
        "truncated": (lines[: entries[-1]], "AUDIT_TRUNCATED"),
        "re-signed": (resigned(), "AUDIT_CHECKPOINT_SIGNATURE_INVALID"),
        "rolled-back checkpoint": (rolled, "AUDIT_CHECKPOINT_ROLLBACK"),
    }


def test_every_tamper_is_detected(world: ServerProcess, pki: SimulatedPki, bao: Bao, tmp_path: Path) -> None:
    for node in nodes(world, pki):
        for _ in range(3):
            node.release("dataset/train")
    conn = cli_token(world, tmp_path / "token.json")
    export, key = tmp_path / "audit.jsonl", public_key_file(bao, tmp_path / "key.json")
    time.sleep(1.2)  # a few checkpoints among the entries
    for node in nodes(world, pki):
        node.release("dataset/other")
    assert sovereign("audit", "export", "-o", str(export), *conn).returncode == 0
    lines = export.read_bytes().splitlines(keepends=True)
    keys = load_audit_keys(key.read_bytes())
    assert verify_export(lines, keys).size > 0
    for name, (tampered, code) in _tampers(lines).items():
        with pytest.raises(ExportInvalid) as info:
            verify_export(tampered, keys)
        assert info.value.code == code, f"{name}: {info.value.code} {info.value.message}"
    bad = tmp_path / "tampered.jsonl"
    bad.write_bytes(b"".join(_tampers(lines)["edited"][0]))
    result = sovereign(
        "audit", "verify", str(bad), "--public-key", str(key), "--accept-unchecked-head", "--json"
    )
    assert result.returncode == 1 and json.loads(result.stdout)["error"]["code"] == "AUDIT_ROOT_MISMATCH"


def test_an_export_cut_back_to_an_older_checkpoint_is_caught_by_the_server_head(
    world: ServerProcess, pki: SimulatedPki, bao: Bao, tmp_path: Path
) -> None:
    """The review's attack on the real ledger: keep the entries under an older signed checkpoint, header
    included. Alone it is a valid older export, so verify refuses to call it OK; the server's head or a
    saved checkpoint (signatures checked with the audit key) shows it is stale."""
    for node in nodes(world, pki):
        node.release("dataset/train")
    wait_for_checkpoint(audit_stub(world), 2)
    conn = cli_token(world, tmp_path / "token.json")
    export, key = tmp_path / "audit.jsonl", public_key_file(bao, tmp_path / "key.json")
    head = tmp_path / "head.json"
    assert sovereign("audit", "checkpoint", "-o", str(head), *conn).returncode == 0
    assert sovereign("audit", "export", "-o", str(export), *conn).returncode == 0
    lines = export.read_bytes().splitlines(keepends=True)
    older_at = next(i for i, line in enumerate(lines) if i > 0 and line.startswith(b'{"checkpoint":'))
    older = parse_checkpoint_line(lines[older_at], older_at + 1)[0]
    assert older.size < parse_header(lines[0]).size
    rolled = tmp_path / "rolled.jsonl"
    rolled.write_bytes(b"".join([header_line(older), *lines[1 : older_at + 1]]))
    verify = ("audit", "verify", str(rolled), "--public-key", str(key), "--json")
    plain = sovereign(*verify)
    assert plain.returncode == 1 and not plain.stdout.startswith("OK")
    assert json.loads(plain.stdout)["error"]["code"] == "AUDIT_FRESHNESS_UNCHECKED"
    assert json.loads(plain.stdout)["fresh"] is False
    for trusted in (["--checkpoint", str(head)], ["--server-head", *conn]):
        caught = sovereign(*verify, *trusted)
        assert caught.returncode == 1, caught.stdout + caught.stderr
        assert json.loads(caught.stdout)["error"]["code"] == "AUDIT_EXPORT_STALE", trusted
    fine = sovereign(
        "audit", "verify", str(export), "--public-key", str(key), "--checkpoint", str(head), "--json"
    )
    assert fine.returncode == 0 and json.loads(fine.stdout)["fresh"] is True, fine.stdout + fine.stderr


def storm(
    nodes_: list[NodeClient], stop: threading.Event
) -> tuple[list[tuple[int, str, bytes]], Callable[[], None]]:
    """Release keys from every node in a loop until ``stop``; returns what clients received."""
    got: list[tuple[int, str, bytes]] = []
    lock = threading.Lock()

    def loop(node: NodeClient) -> None:
        while not stop.is_set():
            request = node.release_request("dataset/train")
            try:
                reply = node.release_stub.ReleaseKey(request, timeout=5)
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            from proto.sovereign.v1 import key_release_pb2

            body = key_release_pb2.ReleaseRequestBody.FromString(request.body)
            with lock:
                got.append((reply.audit_sequence, node.node_id, bytes(body.request_id)))

    threads = [threading.Thread(target=loop, args=(n,)) for n in nodes_ for _ in range(4)]
    for t in threads:
        t.start()

    def join() -> None:
        for t in threads:
            t.join(10)

    return got, join


def test_sigkill_during_a_release_storm_loses_no_grant(pki: SimulatedPki, tmp_path: Path) -> None:
    bao = start_bao(tmp_path / "own-bao")  # its decrypts stay out of the shared OpenBao's audit log
    world = ServerProcess(tmp_path, prepare(tmp_path, pki, datetime.now(UTC)), bao).start()
    try:
        with world.admin_channel() as channel:
            admin_pb2_grpc.AdminStub(channel).CreateKey(
                admin_pb2.CreateKeyRequest(name="dataset/train", kind=KIND["dataset"])
            )
        clients = nodes(world, pki)
        received: list[tuple[int, str, bytes]] = []
        for cycle in range(3):
            stop = threading.Event()
            got, join = storm(clients, stop)
            time.sleep(1.0 + 0.3 * cycle)
            world.proc.kill()  # SIGKILL mid-storm
            world.proc.wait(10)
            stop.set()
            join()
            assert got, f"cycle {cycle}: no release succeeded before the kill"
            received += got
            world.start()
        stub = audit_stub(world)
        size = stub.ListEntries(audit_pb2.ListEntriesRequest(page_size=1, page_token="0"))
        assert size.entries
        conn = cli_token(world, tmp_path / "token.json")
        for _ in range(2):
            clients[0].release("dataset/train")
        wait_for_checkpoint(stub, max(s for s, _, _ in received) + 1)
        export, key = tmp_path / "audit.jsonl", public_key_file(bao, tmp_path / "key.json")
        assert sovereign("audit", "export", "-o", str(export), *conn).returncode == 0
        lines = export.read_bytes().splitlines(keepends=True)
        verify_export(lines, load_audit_keys(key.read_bytes()))  # restarts resumed one consistent tree
        entries = {
            e.seq: e for e in (Entry.decode(line[9:-2]) for line in lines if line.startswith(b'{"entry":'))
        }
        for seq, node_id, request_id in received:
            grant = entries[seq]
            assert grant.kind is Kind.RELEASE_GRANT and grant.fields["node_id"] == node_id
            assert grant.fields["request_id"] == request_id.hex()
        assert sum(e.kind is Kind.SERVER_START for e in entries.values()) == 4
    finally:
        world.stop()
        bao.server.stop()


def test_reconcile_matches_openbao_and_flags_an_outside_decrypt(
    world: ServerProcess, pki: SimulatedPki, bao: Bao, tmp_path: Path
) -> None:
    for node in nodes(world, pki):
        node.release("dataset/train")
    conn = cli_token(world, tmp_path / "token.json")
    time.sleep(0.8)
    log = bao.server.audit_log
    assert log is not None
    result = sovereign("audit", "reconcile", "--bao-log", str(log), "--json", *conn)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] and report["matched"] > 0, result.stdout + result.stderr
    secret_id = Path(bao.report.secret_id_file).read_text().strip()
    approle = OpenBaoTransit(
        BaoSettings(addr=bao.server.addr, auth=AppRoleAuth(bao.report.role_id, secret_id))
    )
    ciphertext = approle.generate_wrapped_data_key().ciphertext
    outside = approle.unwrap(ciphertext)  # the control plane's credentials, used outside the server
    result = sovereign("audit", "reconcile", "--bao-log", str(log), "--json", *conn)
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert [d["request_id"] for d in report["unmatched_decrypts"]] == [outside.request_id]


def test_query_by_node_name_and_key_prefix(world: ServerProcess, pki: SimulatedPki, tmp_path: Path) -> None:
    snp, tdx = nodes(world, pki)
    _, train = snp.release("dataset/train")
    _, model = tdx.release("model/main", "write")
    stub = audit_stub(world)
    by_name = stub.ListEntries(audit_pb2.ListEntriesRequest(node_name="audit-snp", page_size=1000)).entries
    assert snp.node_id in {e.node_id for e in by_name} and tdx.node_id not in {e.node_id for e in by_name}
    assert train.audit_sequence in [e.sequence for e in by_name]
    assert not stub.ListEntries(audit_pb2.ListEntriesRequest(node_name="audit-nobody")).entries
    by_prefix = stub.ListEntries(audit_pb2.ListEntriesRequest(key_prefix="dataset/", page_size=1000)).entries
    assert by_prefix and all(e.key_name.startswith("dataset/") for e in by_prefix)
    assert train.audit_sequence in [e.sequence for e in by_prefix]
    assert model.audit_sequence not in [e.sequence for e in by_prefix]
    # a LIKE wildcard in the prefix is a literal character, not "anything"
    assert not stub.ListEntries(audit_pb2.ListEntriesRequest(key_prefix="dataset%")).entries
    conn = cli_token(world, tmp_path / "token.json")
    query = sovereign("audit", "query", "--node", "audit-snp", "--key", "dataset/*", "--json", *conn)
    assert query.returncode == 0, query.stdout + query.stderr
    rows = json.loads(query.stdout)["entries"]
    assert train.audit_sequence in [r["seq"] for r in rows]
    assert {r["node_id"] for r in rows} <= {e.node_id for e in by_name}
    assert all(r["key_name"].startswith("dataset/") for r in rows)


def test_public_key_is_fetched_fingerprinted_pinned_and_checks_proofs(
    world: ServerProcess, pki: SimulatedPki, bao: Bao, tmp_path: Path
) -> None:
    snp, _ = nodes(world, pki)
    _, granted = snp.release("dataset/train")
    wait_for_checkpoint(audit_stub(world), granted.audit_sequence + 1)
    conn = cli_token(world, tmp_path / "token.json")
    pin = tmp_path / "audit.pub.json"
    fetched = sovereign("audit", "public-key", "-o", str(pin), "--json", *conn)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    # the fingerprint is the one of the key OpenBao holds, computed here from OpenBao's own answer
    transit = json.loads(public_key_file(bao, tmp_path / "bao-key.json").read_text())["data"]["keys"]
    expected = {v: key_fingerprint(base64.b64decode(k["public_key"])) for v, k in transit.items()}
    assert json.loads(fetched.stdout)["fingerprints"] == expected
    text = sovereign("audit", "public-key", *conn)
    assert text.returncode == 0 and all(f in text.stdout for f in expected.values())
    leaf = str(granted.audit_sequence)
    proof = sovereign("audit", "proof", "--leaf", leaf, "--public-key", str(pin), "--json", *conn)
    assert proof.returncode == 0, proof.stdout + proof.stderr
    assert json.loads(proof.stdout)["signature"].startswith("verified with sovereign-audit")
    # a key that is not the server's: the checkpoint does not verify, the proof is refused
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PublicKey.from_public_bytes(LocalSigner().public_key_bytes()).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    refused = sovereign("audit", "proof", "--leaf", leaf, "--public-key", str(other), "--json", *conn)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert json.loads(refused.stdout)["error"]["code"] == "AUDIT_CHECKPOINT_SIGNATURE_INVALID"


def test_query_says_when_nothing_matches_and_names_nodes_outside_the_rows(
    world: ServerProcess, pki: SimulatedPki, tmp_path: Path
) -> None:
    snp, _ = nodes(world, pki)
    _, granted = snp.release("dataset/train")
    conn = cli_token(world, tmp_path / "token.json")
    nothing = ["audit", "query", "--node", "audit-nobody", *conn]
    text = sovereign(*nothing)
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.strip() == "no entries match the query"
    as_json = sovereign(*nothing, "--json")
    assert json.loads(as_json.stdout) == {"ok": True, "entries": []}
    # only the grant is shown, not the registration that carries the name: the NODE column still names it
    grant_only = sovereign("audit", "query", "--node", snp.node_id, "--decision", "grant", "--key",
                           "dataset/train", *conn)  # fmt: skip
    assert grant_only.returncode == 0, grant_only.stdout + grant_only.stderr
    row = next(
        line for line in grant_only.stdout.splitlines() if line.startswith(f"{granted.audit_sequence} ")
    )
    assert f"audit-snp ({snp.node_id[:8]})" in row and "registration" not in grant_only.stdout


def test_proof_from_a_size_without_checkpoint_says_which_sizes_have_one(
    world: ServerProcess, pki: SimulatedPki, bao: Bao, tmp_path: Path
) -> None:
    snp, _ = nodes(world, pki)
    _, granted = snp.release("dataset/train")
    stub = audit_stub(world)
    latest = wait_for_checkpoint(stub, granted.audit_sequence + 1).tree_size
    missing = next(n for n in range(latest - 1, 0, -1) if not _has_checkpoint(stub, n))
    conn = cli_token(world, tmp_path / "token.json")
    pin = tmp_path / "audit.pub.json"
    assert sovereign("audit", "public-key", "-o", str(pin), *conn).returncode == 0
    proof = sovereign("audit", "proof", "--first", str(missing), "--public-key", str(pin), "--json", *conn)
    assert proof.returncode == 1, proof.stdout + proof.stderr
    error = json.loads(proof.stdout)["error"]
    assert error["code"] == "AUDIT_NOT_FOUND" and f"--first {missing}" in error["message"]
    assert "sovereign audit checkpoint -o FILE" in error["hint"] and "audit tail" not in error["hint"]
    text = sovereign("audit", "proof", "--first", str(missing), "--public-key", str(pin), *conn)
    assert text.stderr.count("AUDIT_NOT_FOUND") == 1, text.stderr


def _has_checkpoint(stub: audit_pb2_grpc.AuditStub, size: int) -> bool:
    try:
        stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(tree_size=size))
    except grpc.RpcError:
        return False
    return True
