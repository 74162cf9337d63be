"""The node agent (``enclave.NodeAgent``) against a real ``sovereign serve`` over TLS with the CA pinned:
simulated SNP and TDX nodes (same SimulatedPki the server trusts) register, fetch keys, decrypt a sealed
dataset, seal a model output, renew their lease in the background, and are denied once revoked.

Independent oracle: the data owner's copy of a key is unwrapped straight from OpenBao (root token) from
the wrapped form in the server's database, not through the node agent."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from e2e.world import ROOT, SNP_MEASUREMENT, TDX_MRTD, Bao, ServerProcess

from attestation.simulate import SimulatedPki
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, ControlPlaneError, NodeState
from enclave.errors import NodeCode, NodeError
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp, simulated_tdx
from kms.envelope import StreamError, encrypt_stream, read_header
from kms.envelope.files import decrypt_file, encrypt_file
from kms.openbao.vault import BaoSettings, OpenBaoTransit, TokenAuth
from kms.server.tls import ensure_dev_tls
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc
from sovereign.cli import main
from sovereign.cli import node as node_cli

DATASET = os.urandom(3 * 65536 + 123)  # several chunks with a short last one


def agent(server: ServerProcess, pki: SimulatedPki, tee: str, name: str) -> NodeAgent:
    assert server.ca is not None
    client = ControlPlaneClient(f"127.0.0.1:{server.port}", ca_pem=server.ca.read_bytes(), timeout=10)
    provider = (
        simulated_snp(pki, measurement=SNP_MEASUREMENT) if tee == "snp" else simulated_tdx(pki, mrtd=TDX_MRTD)
    )
    return NodeAgent(client, provider, NodeIdentity.generate(), node_name=name, groups=["trainers"])


@pytest.fixture(scope="module")
def nodes(server: ServerProcess, pki: SimulatedPki) -> Iterator[dict[str, NodeAgent]]:
    out = {tee: agent(server, pki, tee, f"agent-{tee}") for tee in ("snp", "tdx")}
    yield out
    for node in out.values():
        node.stop()
        node.client.close()


def owner_key(server: ServerProcess, bao: Bao, name: str, version: int = 1) -> bytes:
    """The data owner's view: unwrap the catalogue's wrapped key directly in OpenBao."""
    row = (
        sqlite3.connect(server.db)
        .execute("SELECT ciphertext FROM key_versions WHERE key_name = ? AND version = ?", (name, version))
        .fetchone()
    )
    assert row and row[0], f"no wrapped key {name} v{version} in the server database"
    settings = BaoSettings(addr=bao.server.addr, auth=TokenAuth(bao.server.root_token or ""))
    transit = OpenBaoTransit(settings)
    try:
        return transit.unwrap(row[0]).plaintext
    finally:
        transit.close()


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_register_and_fetch_the_owners_key(
    nodes: dict[str, NodeAgent], server: ServerProcess, bao: Bao, tee: str
) -> None:
    node = nodes[tee]
    result = node.register()
    assert result.state is NodeState.ATTESTED, result.reasons
    assert result.node_id == node.node_id and result.groups == ("trainers",) and result.simulated
    assert result.lease is not None and result.lease.expires_at > datetime.now(UTC)
    released = node.release("ds-train")
    assert released.key == owner_key(server, bao, "ds-train")
    assert released.key_version == 1 and released.purpose == "read"
    with pytest.raises(ControlPlaneError) as info:
        node.fetch_key("ds-train", "write")  # dataset keys are read-only
    assert info.value.code is NodeCode.RELEASE_DENIED and info.value.reason


def test_decrypt_a_sealed_dataset(
    nodes: dict[str, NodeAgent], server: ServerProcess, bao: Bao, tmp_path: Path
) -> None:
    plain, sealed, out = tmp_path / "train.bin", tmp_path / "train.sov", tmp_path / "train.out"
    plain.write_bytes(DATASET)
    encrypt_file(owner_key(server, bao, "ds-train"), plain, sealed, key_ref="ds-train@v1", chunk_size=65536)
    node = nodes["tdx"]
    if not node.node_id:
        node.require_attested(node.register())
    with pytest.raises(NodeError) as on_disk:  # tmp_path is on a disk filesystem
        node.decrypt(None, sealed, out)
    assert on_disk.value.code is NodeCode.PLAINTEXT_OUTPUT_UNSAFE and not out.exists()
    result = node.decrypt(None, sealed, out, force_non_tmpfs=True)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(DATASET).digest()
    assert (result.key_name, result.key_version, result.plaintext_bytes, result.chunks) == (
        "ds-train",
        1,
        len(DATASET),
        4,
    )
    with pytest.raises(NodeError) as mismatch:
        node.decrypt("ds-other", sealed, tmp_path / "x", force_non_tmpfs=True)
    assert mismatch.value.code is NodeCode.KEY_REF_MISMATCH
    tampered = bytearray(sealed.read_bytes())
    tampered[-5] ^= 1
    bad = tmp_path / "tampered.sov"
    bad.write_bytes(bytes(tampered))
    with pytest.raises(StreamError):
        node.decrypt(None, bad, tmp_path / "tampered.out", force_non_tmpfs=True)
    assert not (tmp_path / "tampered.out").exists()


def test_seal_a_model_output_then_read_it_elsewhere(
    nodes: dict[str, NodeAgent], server: ServerProcess, bao: Bao, tmp_path: Path
) -> None:
    weights, sealed, back = tmp_path / "w.bin", tmp_path / "w.sov", tmp_path / "w.out"
    weights.write_bytes(DATASET[::-1])
    writer, reader = nodes["snp"], nodes["tdx"]
    for node in (writer, reader):
        if not node.node_id:
            node.require_attested(node.register())
    written = writer.encrypt("model-main", weights, sealed, chunk_size=65536)
    with sealed.open("rb") as src:
        assert read_header(src).key_ref == f"model-main@v{written.key_version}".encode()
    assert DATASET[::-1] not in sealed.read_bytes()
    reader.decrypt("model-main", sealed, back, force_non_tmpfs=True)
    assert back.read_bytes() == DATASET[::-1]
    # the owner's copy of the model key opens it too: it really is the catalogue's key
    decrypt_file(owner_key(server, bao, "model-main", written.key_version), sealed, tmp_path / "owner.out")
    assert (tmp_path / "owner.out").read_bytes() == DATASET[::-1]


def test_lease_renewal_in_the_background(server: ServerProcess, pki: SimulatedPki) -> None:
    node = agent(server, pki, "tdx", "agent-renewing")
    try:
        first = node.require_attested(node.register())
        assert first.lease is not None
        lease_seconds = (first.lease.expires_at - first.lease.issued_at).total_seconds()
        node.start_renewal(timedelta(seconds=lease_seconds), min_interval=0.2)  # always "near expiry"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = node.registration
            assert current is not None
            if current.lease is not None and current.lease.lease_id != first.lease.lease_id:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the lease was not renewed; last error: {node.last_renewal_error!r}")
        node.stop()
        assert node.node_id == first.node_id and node.last_renewal_error is None
        assert len(node.fetch_key("ds-train")) == 32
    finally:
        node.stop()
        node.client.close()


def test_revoked_node_is_denied(server: ServerProcess, pki: SimulatedPki) -> None:
    node = agent(server, pki, "snp", "agent-revoked")
    try:
        node.require_attested(node.register())
        assert len(node.fetch_key("ds-train")) == 32
        with server.admin_channel() as channel:
            changed = admin_pb2_grpc.AdminStub(channel).RevokeNode(
                admin_pb2.RevokeNodeRequest(node_id=node.node_id, reason="decommissioned")
            )
        assert changed.WhichOneof("outcome") == "node", "revocation was held for a second operator"
        with pytest.raises(ControlPlaneError) as info:
            node.fetch_key("ds-train")
        assert (info.value.code, info.value.reason) == (NodeCode.RELEASE_DENIED, "RELEASE_NODE_NOT_ATTESTED")
        assert info.value.status == "FAILED_PRECONDITION"
        renewal = node.renew()
        assert renewal.state is NodeState.REJECTED and [r.code for r in renewal.reasons] == [
            "NODE_NOT_RENEWABLE"
        ]
        with pytest.raises(NodeError) as again:
            node.reattest()
        assert again.value.code is NodeCode.REGISTRATION_REJECTED
    finally:
        node.client.close()


def test_tls_pin_refuses_a_server_signed_by_another_ca(server: ServerProcess, tmp_path: Path) -> None:
    other_ca = ensure_dev_tls(tmp_path / "other", datetime.now(UTC)).ca.read_bytes()
    client = ControlPlaneClient(f"127.0.0.1:{server.port}", ca_pem=other_ca, timeout=5)
    try:
        with pytest.raises(ControlPlaneError) as info:
            client.challenge("node-x")
        assert info.value.code is NodeCode.CONTROL_PLANE_UNAVAILABLE
    finally:
        client.close()


def test_cli_node_explains_what_it_cannot_do(server: ServerProcess) -> None:
    assert server.ca is not None
    base = [sys.executable, "-m", "sovereign", "node", "register", "--server", f"127.0.0.1:{server.port}"]
    base += ["--ca", str(server.ca), "--node-name", "cli-node", "--json"]
    simulated = subprocess.run(
        [*base, "--provider", "simulated-snp"], check=False, cwd=ROOT, capture_output=True, text=True
    )
    assert simulated.returncode == 1, simulated.stderr
    assert '"code": "PROVIDER_UNAVAILABLE"' in simulated.stdout and "SimulatedPki" in simulated.stdout
    unpinned = subprocess.run(
        [*base[:-5], "--node-name", "cli-node"], check=False, cwd=ROOT, capture_output=True, text=True
    )
    assert unpinned.returncode == 1 and "CONFIG_INVALID" in unpinned.stderr


# --- plaintext output: tmpfs files or streams, never a disk file by default ----------------------------


def _sealed_dataset(server: ServerProcess, bao: Bao, directory: Path) -> Path:
    sealed = directory / "train.sov"
    with sealed.open("wb") as out:
        encrypt_stream(
            owner_key(server, bao, "ds-train"), DATASET, out, key_ref="ds-train@v1", chunk_size=65536
        )
    return sealed


def test_decrypt_output_is_checked_before_any_key_is_released(
    server: ServerProcess, bao: Bao, pki: SimulatedPki, tmp_path: Path
) -> None:
    sealed = _sealed_dataset(server, bao, tmp_path)
    unregistered = agent(server, pki, "snp", "agent-unregistered")
    try:
        # PLAINTEXT_OUTPUT_UNSAFE, not NODE_NOT_ATTESTED: the output was refused before asking for the key
        for out in (tmp_path / "plain.out", (tmp_path / "redirect").open("wb")):
            with pytest.raises(NodeError) as info:
                unregistered.decrypt(None, sealed, out)
            assert info.value.code is NodeCode.PLAINTEXT_OUTPUT_UNSAFE, info.value
        with pytest.raises(NodeError) as info:
            unregistered.decrypt(None, sealed, Path("/dev/shm") / f"sov-{os.getpid()}.out")
        assert info.value.code is NodeCode.NODE_NOT_ATTESTED  # a tmpfs path passes the check
    finally:
        unregistered.client.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redirect", "train.sov"]
    assert (tmp_path / "redirect").read_bytes() == b""


def test_decrypt_to_tmpfs_and_to_a_pipe(
    nodes: dict[str, NodeAgent], server: ServerProcess, bao: Bao, tmp_path: Path
) -> None:
    sealed = _sealed_dataset(server, bao, tmp_path)
    node = nodes["snp"]
    if not node.node_id:
        node.require_attested(node.register())
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        result = node.decrypt(None, sealed, Path(shm) / "train.bin")
        assert (Path(shm) / "train.bin").read_bytes() == DATASET and result.chunks == 4
    received = _through_a_pipe(lambda out: node.decrypt(None, sealed, out))
    assert received == DATASET


def _through_a_pipe(write: Callable[[io.BufferedWriter], object]) -> bytes:
    """Run ``write`` with the write end of a real pipe, collecting what comes out of the other end."""
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 1 << 16), b"")))
    reader.start()
    try:
        with open(write_fd, "wb") as out:
            write(out)
    finally:
        reader.join(30)
        os.close(read_fd)
    return b"".join(chunks)


def test_cli_node_decrypt_streams_to_stdout(
    server: ServerProcess, bao: Bao, pki: SimulatedPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sovereign node decrypt IN -` in this process against the real server; only the evidence provider
    is the simulated one the server trusts (a CLI process cannot load a simulator PKI yet)."""
    assert server.ca is not None
    sealed = _sealed_dataset(server, bao, tmp_path)
    monkeypatch.setattr(node_cli, "build_provider", lambda config: simulated_tdx(pki, mrtd=TDX_MRTD))
    argv = [
        "node",
        "decrypt",
        str(sealed),
        "-",
        "--server",
        f"127.0.0.1:{server.port}",
        "--ca",
        str(server.ca),
    ]
    argv += ["--node-name", "cli-decrypt", "--group", "trainers", "--json"]
    report = io.StringIO()
    monkeypatch.setattr(sys, "stderr", report)
    codes: list[int] = []

    def run(out: io.BufferedWriter) -> None:
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
        codes.append(main(argv))

    streamed = _through_a_pipe(run)
    assert codes == [0], report.getvalue()
    assert streamed == DATASET  # stdout carries the plaintext and nothing else
    outcome = json.loads(report.getvalue())
    assert outcome["ok"] and outcome["file"]["plaintext_bytes"] == len(DATASET)
