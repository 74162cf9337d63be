"""The whole lifecycle on embedded defaults, against real components (what ``./dev demo`` shows).

A real OpenBao (dev mode, file audit device), the real ``sovereign serve`` on loopback over TLS with SQLite,
and simulated nodes whose evidence is in the real SEV-SNP / TDX formats: an SNP and a TDX node register,
a data owner seals a dataset, both nodes fetch the key and stream-decrypt it (hash checked), a model
output is sealed with a model key; an SNP node with two simulated H100s registers with its GPUs verified and
bound to its registration, and one whose VBIOS does not match its RIM is refused with the GPU code; a debug
guest, a wrong-measurement guest and a below-minimum-TCB guest are refused with their codes; a node is
revoked and then denied. Last, the auditor verifies the training checkpoint's provenance statement
offline and refuses a tampered copy.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import hvac

from attestation.simulate import SimulatedPki
from attestation.simulate.gpu import GpuSimulator
from enclave.agent import NodeAgent
from enclave.client import ControlPlaneClient, ControlPlaneError, NodeState
from enclave.identity import NodeIdentity
from enclave.providers.gpu import GpuEvidenceSource, SimulatedGpus
from enclave.providers.simulated import simulated_snp, simulated_tdx
from enclave.workload import MemoryKeySource, open_sealed
from kms.audit.checkpoint import load_audit_keys
from kms.audit.errors import AuditError
from kms.audit.export import read_lines, write_items
from kms.audit.reconcile import parse_bao_log, reconcile
from kms.audit.verify import verify_export
from kms.domain.catalogue import Catalogue, KeyKind
from kms.domain.transit import AUDIT_KEY_NAME, KEK_NAME
from kms.envelope import read_header
from kms.envelope.names import format_key_ref
from kms.envelope.stream import encrypt_stream
from kms.oidc.login import openid_client, password_login
from kms.openbao.bootstrap import ROLE_NAME
from kms.openbao.vault import TRANSIT_MOUNT, BaoSettings, OpenBaoTransit, TokenAuth
from kms.sql import open_store
from kms.sql.keys import SqlKeyStore
from sovereign.client import AdminClient, AuditClient, records
from sovereign.demo import realm
from sovereign.demo.provenance_step import provenance_steps
from sovereign.demo.site import SNP_MEASUREMENT, TDX_MRTD, Bao, ControlPlane, prepare_inputs, start_bao

DATASET_KEY = "dataset/train"
MODEL_KEY = "model/main"


@dataclass(frozen=True)
class Step:
    step: str
    actor: str
    expected: str  # "ok" or the code that must refuse it
    outcome: str  # "ok" or the code that did
    detail: str = ""

    @property
    def as_expected(self) -> bool:
        return self.expected == self.outcome

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "as_expected": self.as_expected}


class Recorder:
    def __init__(self, progress: Callable[[str], None]) -> None:
        self.steps: list[Step] = []
        self._progress = progress

    def add(self, step: str, actor: str, expected: str, outcome: str, detail: str = "") -> None:
        self.steps.append(Step(step, actor, expected, outcome, detail))
        mark = "ok " if expected == outcome else "!! "
        self._progress(f"{mark} {actor:<18} {step}: {outcome} {detail}".rstrip())


def _code(err: ControlPlaneError) -> str:
    return err.reason or err.code.value


def operator_channel(plane: ControlPlane, ca: bytes, token: str) -> grpc.Channel:
    """TLS to the operator port (CA pinned), the Keycloak access token as the bearer token."""
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca), grpc.access_token_call_credentials(token)
    )
    return grpc.secure_channel(plane.admin_target, creds)


def _owner_catalogue(plane: ControlPlane, bao: Bao) -> Catalogue:
    """The data owner's view of the catalogue, with the owner's own OpenBao credentials (the dev server's
    root token here) — not the control plane's AppRole, whose decrypts must all be ledger grants."""
    settings = BaoSettings(addr=bao.server.addr, auth=TokenAuth(bao.server.root_token or ""))
    return Catalogue(SqlKeyStore(open_store(plane.db)), OpenBaoTransit(settings), lambda: datetime.now(UTC))


def _audit_steps(
    rec: Recorder, *, plane: ControlPlane, bao: Bao, ca: bytes, token: str, workdir: Path
) -> None:
    """The auditor exports the ledger, verifies it offline with only the audit public key, and reconciles
    OpenBao's own audit log with it (every KEK decrypt by the control plane is a recorded grant)."""
    time.sleep(1.2)  # let a signed checkpoint cover the last entries (one is made at least every second)
    export = workdir / "audit-export.jsonl"
    with operator_channel(plane, ca, token) as channel, tempfile.TemporaryFile() as spool:
        auditor = AuditClient(channel)
        # the head seen before exporting: the export must reach it (freshness), checked offline below
        head = auditor.checkpoint()
        with export.open("wb") as out:
            final = write_items(out, auditor.export(), spool)
    rec.add("export the ledger (Audit RPC)", "auditor carol", "ok", "ok", f"{final.size} entries")
    # The public half of the OpenBao transit audit key is all the offline verifier needs.
    key = hvac.Client(url=bao.server.addr, token=bao.server.root_token).secrets.transit.read_key(
        AUDIT_KEY_NAME
    )
    keys = load_audit_keys(json.dumps(key).encode())
    # Kept for an auditor who verifies later, offline (`sovereign demo --keep DIR`; docs/audit.md):
    # sovereign audit verify audit-export.jsonl --public-key audit-public-key.json --checkpoint audit-checkpoint.json
    (workdir / "audit-public-key.json").write_text(json.dumps(key, sort_keys=True) + "\n")
    (workdir / "audit-checkpoint.json").write_text(
        json.dumps({"checkpoint": head.to_obj()}, sort_keys=True) + "\n"
    )
    try:
        with export.open("rb") as f:
            report = verify_export(read_lines(f), keys, trusted=head, trusted_source="server_head")
        rec.add(
            "verify the export offline",
            "auditor carol",
            "ok",
            "ok" if report.fresh else "AUDIT_FRESHNESS_UNCHECKED",
            f"{report.checkpoints} checkpoint(s), reaches the head of size {head.size}",
        )
    except AuditError as err:
        rec.add("verify the export offline", "auditor carol", "ok", err.code.value, err.message[:60])
    assert bao.server.audit_log is not None
    with bao.server.audit_log.open("rb") as f:
        decrypts = parse_bao_log(f, role_name=ROLE_NAME, path=f"{TRANSIT_MOUNT}/decrypt/{KEK_NAME}")
    with export.open("rb") as f:
        entries = [line[9:-2] for line in read_lines(f) if line.startswith(b'{"entry":')]
    result = reconcile(decrypts, entries)
    rec.add(
        "reconcile OpenBao's audit log with the ledger",
        "auditor carol",
        "ok",
        "ok" if result.ok else "AUDIT_RECONCILE_MISMATCH",
        f"{result.decrypts} KEK decrypts, {result.matched} matched",
    )


@contextmanager
def running_site(
    workdir: Path, pki: SimulatedPki, now: datetime, gpus: GpuSimulator | None = None
) -> Iterator[tuple[ControlPlane, Bao, realm.Standin]]:
    with ExitStack() as stack:
        inputs = prepare_inputs(workdir / "site", pki, now, gpus=gpus)
        idp = realm.start()
        stack.callback(idp.stop)
        bao = start_bao(workdir)
        stack.callback(bao.server.stop)
        plane = ControlPlane(
            workdir,
            inputs,
            bao,
            oidc_issuer=idp.issuer(realm.REALM),
            extra=["--console-listen", "127.0.0.1:0"],
        ).start()
        stack.callback(plane.stop)
        yield plane, bao, idp


def _console_login(url: str, ca: bytes, idp: realm.Standin) -> str:
    """What the console answers a browser opening /login: a 303 to the realm's sign-in page."""
    if not url:
        return "no console"
    parts = urlsplit(url)
    context = ssl.create_default_context(cadata=ca.decode())
    conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, context=context, timeout=10)
    try:
        conn.request("GET", "/login")
        response = conn.getresponse()
        location = response.getheader("Location") or ""
    except (OSError, http.client.HTTPException) as exc:
        return f"unreachable ({type(exc).__name__})"
    finally:
        conn.close()
    to_realm = location.startswith(idp.issuer(realm.REALM) + "/protocol/openid-connect/auth?")
    return str(response.status) if to_realm else f"{response.status} to {location[:60]}"


def sign_in(idp: realm.Standin, username: str) -> str:
    """The operator signs in to the dev realm (password grant via python-keycloak, as ``sovereign login``)."""
    openid = openid_client(idp.server_url, realm.REALM, realm.CLIENT_ID)
    return password_login(openid, username, realm.password_of(username), now=datetime.now(UTC)).access_token


class _Sha256Sink:
    """A write-only sink that keeps only the SHA-256 of what it is given."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _training_step(rec: Recorder, *, workdir: Path, plane: ControlPlane, bao: Bao, pki: SimulatedPki) -> None:
    """examples/train.py as a separate process under `sovereign node exec`: it streams a sealed WebDataset
    shard through open_sealed and writes a sealed safetensors checkpoint with the model key; the data
    owner then opens the checkpoint with the model key from OpenBao and checks the trained weights."""
    # Imported here: numpy and safetensors are the demo's (dev) dependencies, not the installed product's.
    import numpy as np
    from safetensors.numpy import load as safetensors_load

    from sovereign.demo import training

    assert plane.ca is not None
    owner = _owner_catalogue(plane, bao)
    key = owner.unwrap(DATASET_KEY, kind=KeyKind.DATASET)
    data, expected = training.shard_bytes()
    shard, checkpoint = workdir / "shard-000.tar.sealed", workdir / "ckpt.safetensors.sealed"
    training.seal_shard(shard, key.plaintext, format_key_ref(key.name, key.version), data)
    del key, data
    config = workdir / "node.toml"
    config.write_text(
        training.node_toml(
            server=plane.target, ca=plane.ca, sim_pki=training.write_pki(pki, workdir / "sim-pki"),
            socket=workdir / "agent.sock", measurement=SNP_MEASUREMENT, name="trainer-exec",
        )
    )  # fmt: skip
    done = training.run_training(node_config=config, shard=shard, checkpoint=checkpoint)
    outcome = "ok" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-200:]}"
    if done.returncode == 0:
        with checkpoint.open("rb") as src:
            version = int(read_header(src).key_ref.decode().rpartition("@v")[2])
        model = owner.unwrap(MODEL_KEY, version, kind=KeyKind.MODEL)
        keys = MemoryKeySource()
        keys.add(MODEL_KEY, version, model.plaintext)
        del model
        with open_sealed(checkpoint, keys=keys) as f:
            weights = safetensors_load(f.read())["weights"]
        outcome = "ok" if np.allclose(weights, expected) else "WEIGHTS_MISMATCH"
    rec.add(
        "train.py under `node exec`: sealed WebDataset shard in, sealed safetensors checkpoint out",
        "SNP node (separate process)",
        "ok",
        outcome,
        "open_sealed + create_sealed over the agent socket",
    )


def _gpu_steps(rec: Recorder, node: Callable[..., NodeAgent], pki: SimulatedPki, gpus: GpuSimulator) -> None:
    """SNP nodes with two simulated H100s each: the GPUs answer a nonce derived from the registration and
    the CPU report commits to their evidence; the control plane verifies them against its offline RIMs and
    OCSP/CRLs and appraises them under [appraisal.gpu]."""
    cases = [
        ("SNP node + 2 H100s", SimulatedGpus(gpus, 2, seed="trainer-gpu"), "ATTESTED"),
        (
            "H100 VBIOS not its RIM",
            SimulatedGpus(gpus, 2, seed="odd-vbios", fault="vbios-mismatch"),
            "GPU_MEASUREMENT_MISMATCH",
        ),
    ]
    for actor, source, expected in cases:
        result = node(actor.replace(" ", "-").replace("+", "").replace("--", "-").lower(),
                      simulated_snp(pki, measurement=SNP_MEASUREMENT), source).register()  # fmt: skip
        codes = [r.code for r in result.reasons]
        if result.state is NodeState.ATTESTED:
            outcome, detail = "ATTESTED", f"{source.count} GPUs verified; groups {','.join(result.groups)}"
        else:
            outcome = expected if expected in codes else result.state.name
            detail = ",".join(codes)
        rec.add("register with GPUs", actor, expected, outcome, detail)


def run(workdir: Path, progress: Callable[[str], None] = print) -> list[Step]:
    now = datetime.now(UTC)
    pki = SimulatedPki.generate(now)
    gpus = GpuSimulator(now)  # test NVIDIA device and RIM roots, pinned by the demo's trust profile
    rec = Recorder(progress)
    progress(
        "starting the dev Keycloak realm, OpenBao (dev, file audit) and the control plane on loopback ..."
    )
    with running_site(workdir, pki, now, gpus) as (plane, bao, idp), ExitStack() as stack:
        assert plane.ca is not None
        ca = plane.ca.read_bytes()
        token = sign_in(idp, "alice")
        rec.add("sign in (Keycloak realm, password grant)", "operator alice", "ok", "ok", "sovereign-admin")
        console = plane.announced("console on ")
        progress(
            f"web console: {console} (sign in as alice, password alice-password; up while the demo runs)"
        )
        rec.add(
            "web console sends sign-in to the realm",
            "browser",
            "303",
            _console_login(console, ca, idp),
            console,
        )
        channel = operator_channel(plane, ca, token)
        stack.callback(channel.close)
        admin = AdminClient(channel, timeout=30)

        def node(name: str, provider: Any, gpu_source: GpuEvidenceSource | None = None) -> NodeAgent:
            client = ControlPlaneClient(plane.target, ca_pem=ca, timeout=15)
            stack.callback(client.close)
            return NodeAgent(
                client,
                provider,
                NodeIdentity.generate(),
                node_name=name,
                groups=["trainers"],
                gpus=gpu_source,
            )

        admin.create_key(DATASET_KEY, records.KeyKind.DATASET)
        admin.create_key(MODEL_KEY, records.KeyKind.MODEL)
        rec.add(
            f"create keys {DATASET_KEY}, {MODEL_KEY}",
            "operator alice",
            "ok",
            "ok",
            "wrapped by sovereign-kek",
        )

        # The data owner seals a dataset with the key's current version.
        data = os.urandom(3 * (1 << 20) + 4321)
        digest = hashlib.sha256(data).hexdigest()
        sealed = workdir / "train.sealed"
        key = _owner_catalogue(plane, bao).unwrap(DATASET_KEY, kind=KeyKind.DATASET)
        with sealed.open("wb") as out:  # sealed from memory: no dataset plaintext ever lands in the folder
            encrypt_stream(key.plaintext, data, out, key_ref=format_key_ref(key.name, key.version))
        del key
        rec.add("seal dataset (3 MiB)", "data owner", "ok", "ok", f"sha256 {digest[:16]}...")

        nodes = {
            "snp": node("trainer-snp", simulated_snp(pki, measurement=SNP_MEASUREMENT)),
            "tdx": node("trainer-tdx", simulated_tdx(pki, mrtd=TDX_MRTD)),
        }
        for tee, agent in nodes.items():
            result = agent.register()
            rec.add("register", f"{tee.upper()} node", "ATTESTED", result.state.name, ",".join(result.groups))
            try:
                hashed = _Sha256Sink()  # the plaintext is hashed as it streams, never written to the folder
                agent.decrypt(None, sealed, hashed)
                same = hashed.hexdigest() == digest
                rec.add(
                    "fetch key + stream-decrypt dataset",
                    f"{tee.upper()} node",
                    "ok",
                    "ok" if same else "HASH_MISMATCH",
                )
            except ControlPlaneError as err:
                rec.add("fetch key + stream-decrypt dataset", f"{tee.upper()} node", "ok", _code(err))

        weights = workdir / "weights.bin"
        weights.write_bytes(os.urandom(1 << 20))
        try:
            written = nodes["snp"].encrypt(MODEL_KEY, weights, workdir / "weights.sealed")
            rec.add(
                "seal model output (write key)", "SNP node", "ok", "ok", f"{MODEL_KEY} v{written.key_version}"
            )
        except ControlPlaneError as err:
            rec.add("seal model output (write key)", "SNP node", "ok", _code(err))
        finally:
            weights.unlink()  # the plaintext model output does not outlive its sealing
        try:
            nodes["tdx"].fetch_key(DATASET_KEY, "write")
            rec.add("fetch dataset key for writing", "TDX node", "RELEASE_PURPOSE_NOT_ALLOWED", "ok")
        except ControlPlaneError as err:
            rec.add("fetch dataset key for writing", "TDX node", "RELEASE_PURPOSE_NOT_ALLOWED", _code(err))

        _training_step(rec, workdir=workdir, plane=plane, bao=bao, pki=pki)

        _gpu_steps(rec, node, pki, gpus)

        below = {"bootloader": 3, "tee": 0, "snp": 7, "microcode": 115}  # demo policy: Milan snp >= 8
        guests = [
            ("debug guest", simulated_snp(pki, measurement=SNP_MEASUREMENT, debug=True), "POLICY_DEBUG_FORBIDDEN"),
            ("wrong measurement", simulated_tdx(pki, mrtd=b"\x33" * 48), "POLICY_MEASUREMENT_NOT_ALLOWED"),
            ("below-minimum TCB", simulated_snp(pki, measurement=SNP_MEASUREMENT, tcb=below), "POLICY_TCB_BELOW_MINIMUM"),
        ]  # fmt: skip
        for name, provider, code in guests:
            result = node(name.replace(" ", "-").lower(), provider).register()
            codes = [r.code for r in result.reasons]
            outcome = code if result.state is NodeState.REJECTED and code in codes else result.state.name
            rec.add("register", name, code, outcome, ",".join(codes))

        admin.revoke_node(nodes["tdx"].node_id or "", "demo: node decommissioned")
        rec.add("revoke TDX node", "operator alice", "ok", "ok")
        try:
            nodes["tdx"].fetch_key(DATASET_KEY)
            rec.add("fetch key after revocation", "TDX node", "RELEASE_NODE_NOT_ATTESTED", "ok")
        except ControlPlaneError as err:
            rec.add("fetch key after revocation", "TDX node", "RELEASE_NODE_NOT_ATTESTED", _code(err))

        auditor = sign_in(idp, "carol")
        _audit_steps(rec, plane=plane, bao=bao, ca=ca, token=auditor, workdir=workdir)
        with operator_channel(plane, ca, auditor) as audit_channel:
            provenance_steps(
                rec, channel=audit_channel, checkpoint=workdir / "ckpt.safetensors.sealed", workdir=workdir,
                progress=progress,
            )  # fmt: skip
    return rec.steps
