"""Runs INSIDE the network namespace, as root, with the INSTALLED bundle's Python, and does what the site
operator does after ``install.sh``: fills in the installed config (TLS files, the OpenBao HCL's
placeholders, the realm's JWKS, the simulator trust and a policy that admits it), starts OpenBao by
running the rendered ``openbao.service``'s ``ExecStart`` as its ``User=``, initialises and unseals it,
bootstraps it as the control plane's service user, imports signed collateral as that user, then starts
the control plane by running the rendered ``sovereign-control-plane.service``'s ``ExecStart`` as its
``User=``: so it reads the installed ``sovereign.toml`` and nothing else. A simulated SNP node registers
and gets a key released. Prints one JSON line with what happened.

usage: python netns_world.py WORKDIR LAYOUT_JSON TESTS_DIR
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # what systemd gives a service
# the test's connect/lookup logger (tests/airgap/nethook) follows every Python process, services too
ENV.update({k: os.environ[k] for k in ("PYTHONPATH", "SOVEREIGN_NET_LOG") if k in os.environ})


def unit(path: Path) -> dict[str, str]:
    """The [Service] keys of a rendered unit (the last value of each)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` with the user's uid, gid and groups, as systemd's ``User=`` runs it (setpriv execs, so the
    PID is the service's own)."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]


def start_unit(path: Path, log: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    keys = unit(path)
    user, argv = keys["User"], shlex.split(keys["ExecStart"])
    output: list[str] = []
    proc = subprocess.Popen(
        as_user(user, argv), cwd="/", env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def pump() -> None:
        assert proc.stdout is not None
        with log.open("a") as f:
            for line in proc.stdout:
                output.append(line.rstrip())
                f.write(line)
                f.flush()

    threading.Thread(target=pump, daemon=True).start()
    return proc, user, output


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


def wait(what: str, ok: Callable[[], bool], output: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen:\n" + "\n".join(output[-40:]))
        time.sleep(0.2)


def tls(folder: Path) -> tuple[bytes, bytes, bytes]:
    """A site CA and a loopback server certificate it issued: (CA PEM, certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap site CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def put(path: Path, data: bytes | str, group: str, mode: int = 0o640) -> Path:
    """A file the operator places: root-owned, readable by the service's group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, 0, pwd.getpwnam(group).pw_gid)
    os.chmod(path, mode)
    return path


def set_toml(text: str, key: str, value: object) -> str:
    """Set ``key`` in the installed sovereign.toml (a commented-out or present line), as an operator edits it."""
    line = f"{key} = {json.dumps(value)}"
    new, n = re.subn(rf"^#?\s*{key} = .*$", line, text, count=1, flags=re.M)
    return new if n else text + line + "\n"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    work, tests = Path(sys.argv[1]), Path(sys.argv[3])
    site = json.loads(sys.argv[2])
    prefix, config, data = Path(site["prefix"]), Path(site["config_dir"]), Path(site["data_dir"])
    bao_config, user, bao_user = Path(site["openbao_config_dir"]), site["user"], site["openbao_user"]
    sys.path.insert(0, str(tests))  # the e2e helpers (node client, offline realm, policy), not installed
    import grpc
    import hvac
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from e2e.node_client import NodeClient
    from e2e.world import ADMIN_USER, SNP_MEASUREMENT, OfflineRealm, server_policy

    from attestation import collateral_bundle
    from attestation.collateral import CollateralItem, ItemKind
    from attestation.simulate import SimulatedPki
    from enclave.providers.simulated import simulated_snp
    from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2
    from sovereign.cli._common import dump_trust

    bin_dir, units = prefix / "current" / "venv" / "bin", prefix / "current" / "systemd"
    now = datetime.now(UTC)

    # --- the operator's inputs, placed in the installed config folders ---------------------------
    pki = SimulatedPki.generate(now)
    pki.mint_snp_report(measurement=SNP_MEASUREMENT)
    kinds = {"certs": ItemKind.CERTIFICATE, "crls": ItemKind.CRL, "tcb_infos": ItemKind.TDX_TCB_INFO,
             "qe_identities": ItemKind.TDX_QE_IDENTITY}  # fmt: skip
    items = [
        (CollateralItem(kinds[kind], value), "simulator")
        for group in (pki.snp_collateral_items(), pki.tdx_collateral_items())
        for kind, values in group.items()
        for value in values
    ]
    signer = Ed25519PrivateKey.generate()
    signer_pem = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    put(config / "collateral.bundle", collateral_bundle.create(items, signer, now), user)
    put(config / "collateral.pub.pem", signer_pem, user)
    put(config / "trust.json", dump_trust(pki.trust_store()), user)
    put(config / "policies" / "airgap.toml", server_policy(), user)
    ca, cert, key = tls(work)
    put(config / "tls" / "ca.pem", ca, user)
    put(config / "tls" / "server.pem", cert, user)
    put(config / "tls" / "server-key.pem", key, user)
    put(config / "tls" / "openbao-ca.pem", ca, user)
    put(bao_config / "tls" / "openbao.pem", cert, bao_user)
    put(bao_config / "tls" / "openbao-key.pem", key, bao_user)
    realm = OfflineRealm(work / "realm")
    assert realm.jwks_file is not None
    put(config / "realm-jwks.json", realm.jwks_file.read_bytes(), user)

    bao_port, cluster_port = free_port(), free_port()
    hcl_path = bao_config / "openbao.hcl"
    hcl = hcl_path.read_text()
    hcl = hcl.replace("<NODE_ID>", "node-1").replace("<THIS_HOST>:8200", f"127.0.0.1:{bao_port}")
    hcl = hcl.replace("<THIS_HOST>:8201", f"127.0.0.1:{cluster_port}")
    hcl = hcl.replace('"0.0.0.0:8200"', f'"127.0.0.1:{bao_port}"').replace(
        '"0.0.0.0:8201"', f'"127.0.0.1:{cluster_port}"'
    )
    hcl_path.write_text(hcl)

    # --- OpenBao: the rendered unit's ExecStart, as its User= --------------------------------------
    bao_proc, bao_unit_user, bao_out = start_unit(units / "openbao.service", work / "bao.log")
    procs = [bao_proc]
    addr = f"https://127.0.0.1:{bao_port}"
    client = hvac.Client(url=addr, verify=str(config / "tls" / "openbao-ca.pem"))

    def responds() -> bool:
        try:
            client.sys.is_initialized()
            return True
        except Exception:  # not up yet
            return bao_proc.poll() is not None

    try:
        wait("OpenBao answering", responds, bao_out)
        if bao_proc.poll() is not None:
            raise SystemExit("OpenBao exited:\n" + "\n".join(bao_out[-40:]))
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(init["keys"][0])
        client.token = init["root_token"]

        def active() -> bool:
            try:
                health = client.sys.read_health_status(method="GET")
            except Exception:  # sealed or standby answers with an error status
                return False
            return (
                isinstance(health, dict) and health.get("sealed") is False and health.get("standby") is False
            )

        wait("OpenBao active", active, bao_out)

        # --- bootstrap and collateral import as the service user (they write what it reads) ------
        token_dir = work / "operator"
        token_dir.mkdir(mode=0o700)
        os.chown(token_dir, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        token_file = token_dir / "root-token"
        token_file.write_text(init["root_token"] + "\n")
        os.chown(token_file, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        boot = subprocess.run(
            as_user(user, [str(bin_dir / "sovereign"), "kms", "bootstrap", "--addr", addr,
                           "--ca-cert", str(config / "tls" / "openbao-ca.pem"), "--token-file", str(token_file),
                           "--out", str(config / "openbao"), "--json"]),
            capture_output=True, text=True, env=ENV, cwd="/", check=False,
        )  # fmt: skip
        token_file.unlink()
        if boot.returncode != 0:
            raise SystemExit(f"bootstrap failed: {boot.stdout}{boot.stderr}")
        role_id = (config / "openbao" / "role-id").read_text().strip()
        imported = subprocess.run(
            as_user(user, [str(bin_dir / "sovereign"), "collateral", "import", "--bundle",
                           str(config / "collateral.bundle"), "--signer-key", str(config / "collateral.pub.pem"),
                           "--trust", str(config / "trust.json"), "--store", str(data / "collateral"), "--json"]),
            capture_output=True, text=True, env=ENV, cwd="/", check=False,
        )  # fmt: skip
        if imported.returncode != 0:
            raise SystemExit(f"collateral import failed: {imported.stdout}{imported.stderr}")

        # --- the installed sovereign.toml, edited as the operator does ----------------------------
        ports = {"listen": free_port(), "release_listen": free_port(), "admin_listen": free_port()}
        toml_path = config / "sovereign.toml"
        text = toml_path.read_text()
        for name, port in ports.items():
            text = set_toml(text, name, f"127.0.0.1:{port}")
        settings = {
            "oidc_issuer": realm.issuer, "oidc_jwks_file": str(config / "realm-jwks.json"),
            "trust": str(config / "trust.json"), "dev_trust": True,
            "policy": str(config / "policies" / "airgap.toml"), "bao_addr": addr, "bao_role_id": role_id,
        }  # fmt: skip
        for name, value in settings.items():
            text = set_toml(text, name, value)
        toml_path.write_text(text)

        # --- the control plane: the rendered unit's ExecStart, as its User= ----------------------
        plane, plane_user, plane_out = start_unit(
            units / "sovereign-control-plane.service", work / "serve.log"
        )
        procs.append(plane)
        wait(
            "the control plane listening",
            lambda: (
                plane.poll() is not None or any("listening on" in ln and "(TLS)" in ln for ln in plane_out)
            ),
            plane_out,
        )
        if plane.poll() is not None:
            raise SystemExit("the control plane exited:\n" + "\n".join(plane_out[-40:]))
        ca_pem = (config / "tls" / "ca.pem").read_bytes()
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=ca_pem),
            grpc.access_token_call_credentials(realm.token(ADMIN_USER)),
        )

        def create_key() -> bool:
            with grpc.secure_channel(f"127.0.0.1:{ports['admin_listen']}", creds) as channel:
                admin = admin_pb2_grpc.AdminStub(channel)
                try:
                    admin.CreateKey(
                        admin_pb2.CreateKeyRequest(name="ds-train", kind=common_pb2.KEY_KIND_DATASET),
                        timeout=10,
                    )
                    return True
                except grpc.RpcError:
                    if plane.poll() is not None:
                        raise
                    return False  # the operator port comes up a moment after the node port

        wait("CreateKey", create_key, plane_out)
        channel = grpc.secure_channel(
            f"127.0.0.1:{ports['listen']}", grpc.ssl_channel_credentials(root_certificates=ca_pem)
        )
        channel.sovereign_ca = ca_pem  # type: ignore[attr-defined]  # e2e.node_client pins it for KeyRelease
        node = NodeClient(channel, simulated_snp(pki, measurement=SNP_MEASUREMENT), name="airgap-node")
        result = node.register(requested_groups=["trainers"])
        released, response = node.release("ds-train")
        print(json.dumps({
            "imported": json.loads(imported.stdout), "state": common_pb2.NodeState.Name(result.state),
            "key_len": len(released), "audit_sequence": response.audit_sequence,
            "attestation_module": __import__("attestation").__file__,
            "bao_log": str(work / "bao.log"), "serve_log": str(work / "serve.log"),
            "units": {"openbao": bao_unit_user, "control_plane": plane_user},
            "uids": {"openbao": uid_of(bao_proc.pid), "control_plane": uid_of(plane.pid)},
            "db_owner": (data / "sovereign.db").stat().st_uid,
            "audit_log_owner": (Path(site["openbao_log_dir"]) / "audit.log").stat().st_uid,
        }))  # fmt: skip
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
