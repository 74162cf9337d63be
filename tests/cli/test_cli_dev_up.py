"""README's two terminals, for real: ``sovereign dev up`` (OpenBao, the dev realm, ``serve`` trusting a
saved simulator PKI), then ``sovereign node exec -- python examples/train.py`` as a separate node process
with only the exported environment, then ``sovereign dev down``: nothing it started outlives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from cli.test_cli_dev_children import wait_gone
from safetensors.numpy import load

from enclave.workload import MemoryKeySource, open_sealed
from kms.envelope.names import parse_key_ref
from kms.openbao.vault import BaoSettings, OpenBaoTransit, TokenAuth
from sovereign.demo.training import shard_bytes

ROOT = Path(__file__).resolve().parents[2]


def save_bytes(weights: np.ndarray) -> bytes:
    from safetensors.numpy import save

    return save({"weights": weights})


def files_holding(needles: list[bytes], *, since: float) -> list[str]:
    """Regular files under /tmp, /dev/shm and /var/tmp changed since ``since`` that hold a needle."""
    found = []
    for top in ("/tmp", "/dev/shm", "/var/tmp"):
        for folder, _, names in os.walk(top):
            for name in names:
                path = Path(folder) / name
                try:
                    info = path.lstat()
                    if (
                        not path.is_file()
                        or path.is_symlink()
                        or info.st_mtime < since
                        or info.st_size > 64 << 20
                    ):
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(needle in data for needle in needles):
                    found.append(str(path))
    return found


def test_dev_up_then_a_training_node_then_dev_down(tmp_path: Path) -> None:
    started = time.time()
    directory = tmp_path / "dev"
    up = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "dev", "up", "--dir", str(directory), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        lines = [up.stdout.readline()]
        while lines[-1] and lines[-1].rstrip() != "}":
            lines.append(up.stdout.readline())
        text = "".join(lines)
        assert text.strip(), up.stderr.read() if up.stderr else ""
        state = json.loads(text[text.index("{") :])
        assert state["ok"] is True and all(state["children"].values())

        again = subprocess.run(
            [sys.executable, "-m", "sovereign", "dev", "up", "--dir", str(directory)],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert again.returncode == 1 and "DEV_ALREADY_UP" in again.stderr

        # Terminal B: only the exported environment, no flags.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")} | state["env"]
        checkpoint = tmp_path / "ckpt.safetensors.sealed"
        train = subprocess.run(
            [sys.executable, "-m", "sovereign", "node", "exec", "--keys", "dataset/train", "--",
             sys.executable, str(ROOT / "examples" / "train.py"), state["shard"], str(checkpoint)],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=180,
        )  # fmt: skip
        assert train.returncode == 0, train.stdout + train.stderr
        assert "sealed checkpoint" in train.stdout

        # Oracle: the model key straight from OpenBao (dev root token), not through the node.
        named = parse_key_ref(open_header_ref(checkpoint))
        assert named is not None and named[0] == "model/main"
        weights = load(read_with_owner_key(directory, checkpoint, named[1]))["weights"]
        plaintext, expected = shard_bytes()
        assert np.allclose(weights, expected)
        # The training step left no plaintext of the shard (or the checkpoint) in any file written since.
        leaks = files_holding([plaintext[512:656], save_bytes(expected)], since=started)
        assert leaks == [], leaks

        # Operators: only the exported operator environment, no flags (what the banner tells them to do).
        operator = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
        operator |= state["operator_env"] | {"HOME": str(tmp_path / "home")}
        operator_run(["login", "--username", "alice", "--password-stdin"], operator, "alice-password")
        nodes = operator_run(["admin", "nodes", "list"], operator)  # the table README shows
        assert "dev-trainer" in nodes and "attested" in nodes, nodes
        operator_run(["login", "--username", "carol", "--password-stdin"], operator, "carol-password")
        kinds = [
            e["kind"] for e in json.loads(operator_run(["audit", "tail", "--json"], operator))["entries"]
        ]
        assert "release.grant" in kinds and "model.output" in kinds, kinds
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "sovereign", "dev", "down", "--dir", str(directory)],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        code = up.wait(60)
    assert down.returncode == 0, down.stderr
    assert code == 0
    assert wait_gone(str(directory)) == []
    pids = [int(p) for p in state["children"].values()]
    assert not [p for p in pids if pid_alive(p)]


def operator_run(argv: list[str], env: dict[str, str], stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sovereign", *argv],
        cwd=env["HOME"] if Path(env["HOME"]).is_dir() else ROOT, env=env, input=stdin,
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"


def open_header_ref(path: Path) -> bytes:
    from kms.envelope import read_header

    with path.open("rb") as f:
        return read_header(f).key_ref


def read_with_owner_key(directory: Path, sealed: Path, version: int) -> bytes:
    import sqlite3

    row = (
        sqlite3.connect(directory / "run" / "sovereign.db")
        .execute(
            "SELECT ciphertext FROM key_versions WHERE key_name = 'model/main' AND version = ?", (version,)
        )
        .fetchone()
    )
    addr, token = bao_of(directory)
    transit = OpenBaoTransit(BaoSettings(addr=addr, auth=TokenAuth(token)))
    try:
        key = transit.unwrap(row[0]).plaintext
    finally:
        transit.close()
    keys = MemoryKeySource()
    keys.add("model/main", version, key)
    with open_sealed(sealed, keys=keys) as f:
        return f.read()


def bao_of(directory: Path) -> tuple[str, str]:
    state = json.loads((directory / "dev-up.json").read_text())
    return state["bao_addr"], Path(state["bao_root_token_file"]).read_text().strip()
