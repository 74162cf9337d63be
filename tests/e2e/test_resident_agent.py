"""The resident node agent across real processes: ``sovereign serve`` (trusting a simulator PKI saved to
disk), OpenBao, ``sovereign node agent`` and a workload run by ``sovereign node exec`` that reads a
sealed shard through ``enclave.workload.open_sealed`` with its keys from the agent's socket.

The lease is 4 seconds (the demo policy with ``lease_seconds = 4``), so the agent must renew it several
times while the workload reads. Independent oracle for the data: the owner's key unwrapped straight from
OpenBao with the root token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e.world import ROOT, SNP_MEASUREMENT, TDX_MRTD, Bao, ServerProcess, server_policy

from attestation.simulate import SimulatedPki
from enclave.workload import agent_api
from enclave.workload.errors import WorkloadError
from enclave.workload.keys import AgentSocketKeySource
from kms.envelope import encrypt_stream
from kms.openbao.vault import BaoSettings, OpenBaoTransit, TokenAuth
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from sovereign.cli._sim_pki import save_sim_pki
from sovereign.demo.site import Inputs

LEASE_SECONDS = 4
SHARD = os.urandom(5 * 65536 + 77)
NOBODY = 65534
WORKLOAD = r"""
import hashlib, json, sys, time
from enclave.workload import ERRORS, open_sealed
shard, want, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline, reads = time.monotonic() + seconds, 0
while time.monotonic() < deadline:
    try:
        with open_sealed(shard) as f:
            ok = hashlib.sha256(f.read()).hexdigest() == want
    except ERRORS as err:
        print(json.dumps({"reads": reads, "code": str(err.code), "reason": getattr(err, "reason", "")}), flush=True)
        sys.exit(3)
    if not ok:
        sys.exit(4)
    reads += 1
    print(json.dumps({"reads": reads}), flush=True)
    time.sleep(0.2)
sys.exit(0)
"""


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sim") / "pki"
    now = datetime.now(UTC)
    save_sim_pki(SimulatedPki.generate(now), directory, now)
    return directory


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path, bao: Bao) -> Iterator[ServerProcess]:
    """``serve`` trusting the saved PKI (its trust.json and collateral), leases of 4 seconds."""
    workdir = tmp_path_factory.mktemp("serve")
    policy = workdir / "policy.toml"
    policy.write_text(server_policy().replace("lease_seconds = 300", f"lease_seconds = {LEASE_SECONDS}"))
    inputs = Inputs(sim_dir / "trust.json", sim_dir / "collateral", policy)
    proc = ServerProcess(workdir, inputs, bao).start()
    try:
        with proc.admin_channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            admin.CreateKey(
                admin_pb2.CreateKeyRequest(name="dataset/train", kind=common_pb2.KEY_KIND_DATASET)
            )
            admin.CreateKey(admin_pb2.CreateKeyRequest(name="model/main", kind=common_pb2.KEY_KIND_MODEL))
        yield proc
    finally:
        proc.stop()


def owner_key(server: ServerProcess, bao: Bao, name: str) -> bytes:
    row = (
        sqlite3.connect(server.db)
        .execute("SELECT ciphertext FROM key_versions WHERE key_name = ? AND version = 1", (name,))
        .fetchone()
    )
    transit = OpenBaoTransit(BaoSettings(addr=bao.server.addr, auth=TokenAuth(bao.server.root_token or "")))
    try:
        return transit.unwrap(row[0]).plaintext
    finally:
        transit.close()


@pytest.fixture(scope="module")
def shard(plane: ServerProcess, bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "shard-000.tar.sealed"
    with path.open("wb") as out:
        encrypt_stream(
            owner_key(plane, bao, "dataset/train"), SHARD, out, key_ref="dataset/train@v1", chunk_size=65536
        )
    return path


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A folder another uid can reach (pytest's tmp_path is 0700 under root's)."""
    directory = Path(tempfile.mkdtemp(prefix="sov-agent-"))
    os.chmod(directory, 0o711)
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


def node_toml(
    plane: ServerProcess,
    sim_dir: Path,
    directory: Path,
    *,
    tee: str = "snp",
    action: str = "deny",
    extra: str = "",
) -> Path:
    assert plane.ca is not None
    measurement = (SNP_MEASUREMENT if tee == "snp" else TDX_MRTD).hex()
    path = directory / f"node-{tee}-{action}.toml"
    path.write_text(
        f'server = "127.0.0.1:{plane.port}"\nnode_name = "trainer-{tee}"\nca = "{plane.ca}"\n'
        f'provider = "simulated-{tee}"\nsim_pki = "{sim_dir}"\nsim_measurement = "{measurement}"\n'
        f'groups = ["trainers"]\n\n[agent]\nsocket = "{directory / "agent.sock"}"\nsocket_mode = "0660"\n'
        f'revocation_action = "{action}"\ncheck_interval = 0.5\n{extra}'
    )
    return path


def start_agent(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "node", "agent", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("node agent: node ") and line.rstrip().endswith(" ATTESTED"):
            drain(proc)
            return proc
    proc.kill()
    pytest.fail("the node agent did not attest:\n" + "".join(seen[-30:]))


def drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading the agent's log so that a full pipe never blocks it."""
    assert proc.stdout is not None
    threading.Thread(target=proc.stdout.read, daemon=True).start()


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def status(socket_path: Path) -> dict[str, object]:
    return agent_api.call(str(socket_path), {"op": "status"}, timeout=10)


def run_workload(
    socket_path: Path, shard: Path, seconds: float, *, keys: str = "dataset/train"
) -> subprocess.Popen[str]:
    import hashlib

    return subprocess.Popen(
        [sys.executable, "-m", "sovereign", "node", "exec", "--socket", str(socket_path), "--keys", keys, "--",
         sys.executable, "-c", WORKLOAD, str(shard), hashlib.sha256(SHARD).hexdigest(), str(seconds)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def first_read(workload: subprocess.Popen[str]) -> None:
    assert workload.stdout is not None
    line = workload.stdout.readline()
    if not line.startswith("{"):
        workload.kill()
        out, err = workload.communicate()
        pytest.fail(f"the workload did not read: {line}{out}{err}")
    assert json.loads(line)["reads"] == 1


def last_line(out: str) -> dict[str, object]:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_two_process_node_registers_with_the_saved_pki(plane: ServerProcess, sim_dir: Path, tee: str) -> None:
    assert plane.ca is not None
    measurement = (SNP_MEASUREMENT if tee == "snp" else TDX_MRTD).hex()
    done = subprocess.run(
        [sys.executable, "-m", "sovereign", "node", "register", "--server", f"127.0.0.1:{plane.port}",
         "--ca", str(plane.ca), "--node-name", f"cli-{tee}", "--group", "trainers", "--provider",
         f"simulated-{tee}", "--sim-pki", str(sim_dir), "--sim-measurement", measurement, "--json"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    registration = json.loads(done.stdout)["registration"]
    assert registration["state"] == "ATTESTED" and registration["simulated"] is True


@pytest.mark.parametrize("tee", ["snp", "tdx"])
def test_lease_is_renewed_while_the_workload_reads(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path, tee: str
) -> None:
    agent = start_agent(node_toml(plane, sim_dir, sock_dir, tee=tee))
    socket_path = sock_dir / "agent.sock"
    try:
        first = status(socket_path)
        workload = run_workload(socket_path, shard, seconds=3.5 * LEASE_SECONDS)
        out, err = workload.communicate(timeout=120)
        assert workload.returncode == 0, out + err
        assert int(last_line(out)["reads"]) >= 10  # type: ignore[call-overload]
        after = status(socket_path)
        # Each 4 s lease renewed at 50-75% of its life: at least three renewals in 14 s of reading.
        assert int(after["renewals"]) >= 3, after  # type: ignore[call-overload]
        assert after["node_id"] == first["node_id"] and after["state"] == "ATTESTED"
        assert int(after["handouts"]) >= 10  # type: ignore[call-overload]
        assert "keys available: dataset/train@v1" in err
    finally:
        assert stop(agent) == 0


def test_exec_fails_fast_on_a_key_the_node_may_not_have(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path
) -> None:
    agent = start_agent(node_toml(plane, sim_dir, sock_dir))
    try:
        workload = run_workload(sock_dir / "agent.sock", shard, seconds=1, keys="dataset/nope")
        out, err = workload.communicate(timeout=60)
        assert workload.returncode == 1 and "AGENT_KEY_DENIED" in err and not out
    finally:
        stop(agent)


@pytest.mark.parametrize("action", ["deny", "terminate"])
def test_revocation_mid_run_ends_key_access(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path, action: str
) -> None:
    agent = start_agent(node_toml(plane, sim_dir, sock_dir, action=action))
    socket_path = sock_dir / "agent.sock"
    try:
        workload = run_workload(socket_path, shard, seconds=60)
        first_read(workload)  # reading under the agent
        node_id = str(status(socket_path)["node_id"])
        with plane.admin_channel() as channel:
            admin_pb2_grpc.AdminStub(channel).RevokeNode(
                admin_pb2.RevokeNodeRequest(node_id=node_id, reason="test")
            )
        out, err = workload.communicate(timeout=60)
        if action == "deny":
            assert workload.returncode == 3, out + err
            assert last_line(out) | {"reads": 0} == {
                "reads": 0, "code": "WORKLOAD_KEY_UNAVAILABLE", "reason": "AGENT_NODE_REVOKED",
            }  # fmt: skip
        else:
            assert workload.returncode == 128 + signal.SIGTERM, out + err
        assert status(socket_path)["state"] == "REVOKED"
    finally:
        stop(agent)


def test_killed_agent_gives_a_coded_error_and_a_restarted_one_registers_again(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path
) -> None:
    config = node_toml(plane, sim_dir, sock_dir)
    socket_path = sock_dir / "agent.sock"
    agent = start_agent(config)
    workload = run_workload(socket_path, shard, seconds=60)
    try:
        first_read(workload)
        first = status(socket_path)["node_id"]
        agent.kill()
        agent.wait()
        out, err = workload.communicate(timeout=60)
        assert workload.returncode == 3, out + err
        assert last_line(out)["code"] == "WORKLOAD_AGENT_UNAVAILABLE"
        agent = start_agent(config)  # the dead agent's socket file is taken over
        again = status(socket_path)
        assert again["state"] == "ATTESTED" and again["node_id"] != first
        workload = run_workload(socket_path, shard, seconds=1)
        out, err = workload.communicate(timeout=60)
        assert workload.returncode == 0, out + err
    finally:
        if workload.poll() is None:
            workload.kill()
        stop(agent)


def probe_as(uid: int, socket_path: Path) -> dict[str, str]:
    """Ask the agent for a key from a forked child running as ``uid`` (the venv's interpreter lives
    under root's home, so a fresh process as another user could not even start)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, ask, report, exit without running pytest's cleanup
        result = {"code": "", "reason": ""}
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            AgentSocketKeySource(str(socket_path)).read_key(b"dataset/train@v1")
        except WorkloadError as err:
            result = {"code": str(err.code), "reason": getattr(err, "reason", "")}
        except BaseException as err:
            result = {"code": type(err).__name__, "reason": ""}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_caller_with_another_uid_is_refused_at_the_socket(
    plane: ServerProcess, sim_dir: Path, sock_dir: Path
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a child as another uid")
    # The socket's group lets uid 65534 connect; SO_PEERCRED then refuses it (not on the allow-list).
    agent = start_agent(node_toml(plane, sim_dir, sock_dir, extra=f"socket_group = {NOBODY}\n"))
    socket_path = sock_dir / "agent.sock"
    try:
        assert probe_as(NOBODY, socket_path) == {
            "code": "WORKLOAD_AGENT_UNAVAILABLE",
            "reason": "AGENT_PEER_REFUSED",
        }
        assert int(status(socket_path)["refusals"]) >= 1  # type: ignore[call-overload]
        mine = agent_api.call(str(socket_path), {"op": "key", "name": "dataset/train", "purpose": "read"})
        assert mine["ok"] is True and mine["key_ref"] == "dataset/train@v1"
    finally:
        stop(agent)


def test_the_systemd_unit_runs_the_agent_with_the_sample_config(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path
) -> None:
    """deploy/systemd/sovereign-node.service's ExecStart, as written, with deploy/config/node.toml;
    only the install paths and the site's values are substituted."""
    unit = (ROOT / "deploy" / "systemd" / "sovereign-node.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))[
        len("ExecStart=") :
    ]
    sample = (ROOT / "deploy" / "config" / "node.toml").read_text()
    assert plane.ca is not None
    site = {
        'server = "control-plane.example.internal:8443"': f'server = "127.0.0.1:{plane.port}"',
        'ca = "/etc/sovereign/control-plane-ca.pem"': f'ca = "{plane.ca}"',
        'provider = "auto"': 'provider = "simulated-snp"',
        '# sim_pki = "/var/lib/sovereign/sim-pki"': f'sim_pki = "{sim_dir}"',
        "# sim_measurement = ": "sim_measurement = ",
        'socket = "/run/sovereign-node/agent.sock"': f'socket = "{sock_dir / "agent.sock"}"',
    }
    for old, new in site.items():
        assert old in sample, old
        sample = sample.replace(old, new)
    config = sock_dir / "node.toml"
    config.write_text(sample)
    command = exec_start.replace(
        "/opt/sovereign/current/venv/bin/sovereign", str(ROOT / ".venv" / "bin" / "sovereign")
    )
    command = command.replace("/etc/sovereign/node.toml", str(config))
    if shutil.which("systemd-analyze"):  # the unit file itself parses (here with the substituted binary)
        local_unit = sock_dir / "sovereign-node.service"
        local_unit.write_text(unit.replace(exec_start, command))
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(local_unit)], capture_output=True, text=True, check=False
        )
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
        local_unit.unlink()
    proc = subprocess.Popen(
        command.split(), cwd=sock_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        seen = [proc.stdout.readline()]
        deadline = time.monotonic() + 60
        while seen[-1] and not seen[-1].startswith("node agent: node ") and time.monotonic() < deadline:
            seen.append(proc.stdout.readline())
        assert seen[-1].rstrip().endswith(" ATTESTED"), "".join(seen)
        drain(proc)
        workload = run_workload(sock_dir / "agent.sock", shard, seconds=1)
        out, err = workload.communicate(timeout=60)
        assert workload.returncode == 0, out + err
    finally:
        proc.send_signal(signal.SIGTERM)  # the unit's KillSignal
        assert proc.wait(15) == 0


def test_exec_starts_an_agent_for_the_commands_life_and_returns_its_status(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path
) -> None:
    import hashlib

    config = node_toml(plane, sim_dir, sock_dir, tee="tdx")
    base = [sys.executable, "-m", "sovereign", "node", "exec", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "SOVEREIGN_AGENT_SOCKET"}
    reads = subprocess.run(
        [*base, "--keys", "dataset/train", "--", sys.executable, "-c", WORKLOAD, str(shard),
         hashlib.sha256(SHARD).hexdigest(), "1"],
        cwd=ROOT, capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert reads.returncode == 0, reads.stdout + reads.stderr
    assert int(last_line(reads.stdout)["reads"]) >= 1  # type: ignore[call-overload]
    code = subprocess.run(
        [*base, "--", sys.executable, "-c", "import os, sys; sys.exit(7 if os.environ['SOVEREIGN_AGENT_SOCKET'] else 1)"],
        cwd=ROOT, capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert code.returncode == 7, code.stderr
    assert not (sock_dir / "agent.sock").exists()  # the configured socket was never used: nothing ran there


def test_exec_fails_fast_when_the_node_is_rejected(
    plane: ServerProcess, sim_dir: Path, sock_dir: Path
) -> None:
    config = node_toml(plane, sim_dir, sock_dir)
    config.write_text(config.read_text().replace(SNP_MEASUREMENT.hex(), "33" * 48))  # not an approved image
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sovereign", "node", "exec", "--config", str(config), "--", "true"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "REGISTRATION_REJECTED" in done.stderr, done.stderr
    assert "POLICY_MEASUREMENT_NOT_ALLOWED" in done.stderr
    assert time.monotonic() - started < 60  # the first refusal ends it; no waiting out the retries


def test_the_production_profile_refuses_the_saved_pki(
    tmp_path_factory: pytest.TempPathFactory, sim_dir: Path, bao: Bao
) -> None:
    workdir = tmp_path_factory.mktemp("serve-production")
    policy = workdir / "policy.toml"
    policy.write_text(server_policy())
    inputs = Inputs(Path("production"), sim_dir / "collateral", policy)
    production = ServerProcess(workdir, inputs, bao).start()
    try:
        assert production.ca is not None
        done = subprocess.run(
            [sys.executable, "-m", "sovereign", "node", "register", "--server", f"127.0.0.1:{production.port}",
             "--ca", str(production.ca), "--node-name", "sim-in-prod", "--group", "trainers", "--provider",
             "simulated-snp", "--sim-pki", str(sim_dir), "--sim-measurement", SNP_MEASUREMENT.hex(), "--json"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        error = json.loads(done.stdout)["error"]
        assert error["code"] == "REGISTRATION_REJECTED" and "TEST_ROOT_IN_PRODUCTION" in error["message"]
    finally:
        production.stop()


def test_a_tampered_or_truncated_shard_fails_at_its_chunk_with_keys_from_the_agent(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path, tmp_path: Path
) -> None:
    from enclave.workload import open_sealed
    from kms.envelope import Code, StreamError, read_header

    chunk, record = 65536, 17 + 65536 + 16  # the shard's chunk size; a chunk's record on disk
    with shard.open("rb") as f:
        start = len(read_header(f).raw)
    tampered, truncated = tmp_path / "tampered.sealed", tmp_path / "truncated.sealed"
    blob = bytearray(shard.read_bytes())
    blob[start + 2 * record + 100] ^= 0x40
    tampered.write_bytes(bytes(blob))
    truncated.write_bytes(shard.read_bytes()[: start + 3 * record + 10])
    agent = start_agent(node_toml(plane, sim_dir, sock_dir))
    keys = AgentSocketKeySource(str(sock_dir / "agent.sock"))
    try:
        with open_sealed(tampered, keys=keys) as f:
            assert f.read(2 * chunk) == SHARD[: 2 * chunk]  # chunks 0 and 1 are intact
            with pytest.raises(StreamError) as info:
                f.read(1)
        assert (info.value.code, info.value.chunk) == (Code.STREAM_CHUNK_TAMPERED, 2)
        with pytest.raises(StreamError) as cut:
            open_sealed(truncated, keys=keys)
        assert cut.value.code is Code.STREAM_TRUNCATED and cut.value.chunk is not None
    finally:
        stop(agent)


VIA_AGENT = r"""
import json, sys
from enclave.workload import ERRORS, create_sealed, open_sealed
shard, out = sys.argv[1], sys.argv[2]
with open_sealed(shard, via_agent=True) as f, create_sealed(out, key="model/main", via_agent=True) as w:
    w.write(f.read())
print(json.dumps({"written": out}), flush=True)
"""

REVOKED_MID_READ = r"""
import json, sys
from enclave.workload import ERRORS, open_sealed
chunk = 65536
with open_sealed(sys.argv[1], via_agent=True) as through_agent, open_sealed(sys.argv[1]) as key_held:
    through_agent.read(chunk), key_held.read(chunk)
    print(json.dumps({"chunk": 0}), flush=True)
    sys.stdin.readline()  # the test revokes the node meanwhile
    held = len(key_held.read(chunk))  # this reader holds the key: revocation cannot reach it
    try:
        through_agent.read(chunk)
    except ERRORS as err:
        print(json.dumps({"code": str(err.code), "reason": getattr(err, "reason", ""), "held": held}), flush=True)
        sys.exit(3)
sys.exit(0)
"""


def samples(port: int) -> dict[str, float]:
    """The agent's metrics as ``name{label="value",...}`` (labels sorted) -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_workload_streams_through_the_agent_and_its_metrics_move(
    plane: ServerProcess, bao: Bao, sim_dir: Path, shard: Path, sock_dir: Path, tmp_path: Path
) -> None:
    """Read a sealed shard and write a sealed checkpoint with the keys kept in the agent (via_agent);
    the agent's Prometheus endpoint counts it, with a key handout and a refusal for contrast."""
    from kms.envelope import decrypt_stream

    port = free_port()
    agent = start_agent(node_toml(plane, sim_dir, sock_dir, extra=f'metrics_listen = "127.0.0.1:{port}"\n'))
    socket_path = sock_dir / "agent.sock"
    try:
        before = samples(port)
        out = tmp_path / "ckpt.sealed"
        done = subprocess.run(
            [sys.executable, "-m", "sovereign", "node", "exec", "--socket", str(socket_path), "--",
             sys.executable, "-c", VIA_AGENT, str(shard), str(out)],
            cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        import io

        plain = io.BytesIO()
        decrypt_stream(owner_key(plane, bao, "model/main"), io.BytesIO(out.read_bytes()), plain)
        assert plain.getvalue() == SHARD  # the independent oracle: the owner's key, from OpenBao
        AgentSocketKeySource(str(socket_path)).read_key(b"dataset/train@v1")
        refused = agent_api.call(str(socket_path), {"op": "key", "name": "../x", "purpose": "read"})
        assert refused["code"] == agent_api.REQUEST_INVALID
        after = samples(port)
    finally:
        stop(agent)
    chunks = 'sovereign_agent_stream_chunks_total{key="%s",op="%s"}'
    assert after[chunks % ("dataset/train", "open")] >= 6  # 6 chunks, the last read twice (opening)
    assert after[chunks % ("model/main", "seal")] == 1  # the shard fits one 1 MiB chunk
    handouts = 'sovereign_agent_key_handouts_total{key="dataset/train",purpose="read"}'
    assert before.get(handouts, 0) == 0 and after[handouts] == 1
    assert after['sovereign_agent_refusals_total{reason="AGENT_REQUEST_INVALID"}'] == 1
    assert after["sovereign_agent_registrations_total"] == 1 and after["sovereign_agent_attested"] == 1
    assert after["sovereign_agent_keys_held"] >= 2  # dataset/train read, model/main write
    assert "sovereign_agent_lease_renewals_total" in after


def test_revocation_stops_the_next_chunk_of_a_file_opened_through_the_agent(
    plane: ServerProcess, sim_dir: Path, shard: Path, sock_dir: Path
) -> None:
    agent = start_agent(node_toml(plane, sim_dir, sock_dir))
    socket_path = sock_dir / "agent.sock"
    workload = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "node", "exec", "--socket", str(socket_path), "--keys",
         "dataset/train", "--", sys.executable, "-c", REVOKED_MID_READ, str(shard)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert workload.stdout is not None and workload.stdin is not None
        line = workload.stdout.readline()
        assert json.loads(line or "{}") == {"chunk": 0}, line + workload.stderr.read()  # type: ignore[union-attr]
        node_id = str(status(socket_path)["node_id"])
        with plane.admin_channel() as channel:
            admin_pb2_grpc.AdminStub(channel).RevokeNode(
                admin_pb2.RevokeNodeRequest(node_id=node_id, reason="test")
            )
        deadline = time.monotonic() + 30
        while status(socket_path)["state"] != "REVOKED" and time.monotonic() < deadline:
            time.sleep(0.2)  # the agent sees it at its next check (check_interval = 0.5 s)
        workload.stdin.write("go\n")
        workload.stdin.flush()
        out, err = workload.communicate(timeout=60)
        assert workload.returncode == 3, out + err
        assert json.loads(out) == {
            "code": "WORKLOAD_KEY_UNAVAILABLE", "reason": "AGENT_NODE_REVOKED", "held": 65536,
        }  # fmt: skip
    finally:
        if workload.poll() is None:
            workload.kill()
        stop(agent)
