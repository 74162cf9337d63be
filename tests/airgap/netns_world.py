"""Runs INSIDE the network namespace with the INSTALLED bundle's Python: collateral import from a
signed bundle, OpenBao from the installed wheel, bootstrap, ``sovereign serve``, a simulated SNP node
that registers and gets a key released. Prints one JSON line with what happened.

usage: python netns_world.py WORKDIR PREFIX DATA_DIR TESTS_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def main() -> int:
    work, prefix, data, tests = (Path(a) for a in sys.argv[1:5])
    sys.path.insert(0, str(tests))  # the e2e helpers (node client, policy), not installed
    from e2e.node_client import NodeClient
    from e2e.world import KEYS, SNP_MEASUREMENT, Bao, Inputs, ServerProcess, server_policy

    from attestation import collateral_bundle
    from attestation.collateral import CollateralItem, ItemKind
    from attestation.simulate import SimulatedPki
    from enclave.providers.simulated import simulated_snp
    from kms.openbao.bootstrap import bootstrap
    from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2
    from sovereign.cli._common import dump_trust
    from sovereign.devtools.openbao_server import OpenBaoServer

    bin_dir = prefix / "current" / "venv" / "bin"
    now = datetime.now(UTC)
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
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Ed25519PrivateKey.generate()
    (work / "collateral.bundle").write_bytes(collateral_bundle.create(items, signer, now))
    from cryptography.hazmat.primitives import serialization

    (work / "collateral-signer.pub.pem").write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (work / "trust.json").write_text(dump_trust(pki.trust_store()))
    (work / "policy.toml").write_text(server_policy())
    store = data / "collateral"
    imported = subprocess.run(
        [str(bin_dir / "sovereign"), "collateral", "import", "--bundle", str(work / "collateral.bundle"),
         "--signer-key", str(work / "collateral-signer.pub.pem"), "--trust", str(work / "trust.json"),
         "--store", str(store), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if imported.returncode != 0:
        raise SystemExit(f"collateral import failed: {imported.stdout}{imported.stderr}")

    server = OpenBaoServer.dev(work / "bao")
    try:
        report = bootstrap(server.addr, server.root_token or "", work / "approle")
        plane = ServerProcess(
            work / "plane", Inputs(work / "trust.json", store, work / "policy.toml"), Bao(server, report)
        )
        plane.workdir.mkdir()
        command = plane.command
        plane.command = lambda: [str(bin_dir / "sovereign"), *command()[3:]]  # type: ignore[method-assign]
        plane.start()
        try:
            with plane.admin_channel() as channel:
                admin = admin_pb2_grpc.AdminStub(channel)
                admin.CreateKey(admin_pb2.CreateKeyRequest(name="ds-train", kind=common_pb2.KEY_KIND_DATASET))
            node = NodeClient(
                plane.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="airgap-node"
            )
            result = node.register(requested_groups=["trainers"])
            key, response = node.release("ds-train")
            print(json.dumps({
                "imported": json.loads(imported.stdout), "state": common_pb2.NodeState.Name(result.state),
                "key_len": len(key), "audit_sequence": response.audit_sequence, "keys": sorted(KEYS),
                "attestation_module": __import__("attestation").__file__, "bao_log": str(server.log_path),
            }))  # fmt: skip
        finally:
            plane.stop()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
