"""The training example's inputs: a WebDataset-style shard sealed under a dataset key, and a node.toml
for a simulated node. Used by ``sovereign dev up`` and the ``./dev demo`` training step; the script
itself is ``examples/train.py`` (it reads the shard with ``open_sealed`` and seals a safetensors
checkpoint with ``create_sealed``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from attestation.simulate import SimulatedPki
from attestation.simulate.persist import dump_pki
from kms.envelope import encrypt_stream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train.py"
SAMPLES = 16


def shard_bytes(samples: int = SAMPLES) -> tuple[bytes, np.ndarray]:
    """A tar of ``samples`` records (``NNNNNN.npy``: 4 float32, ``NNNNNN.cls``: a label) and the sum of
    the arrays (what examples/train.py's "weights" must come out as)."""
    buf = io.BytesIO()
    total = np.zeros(4, dtype=np.float32)
    rng = np.random.default_rng(7)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(samples):
            array = rng.standard_normal(4).astype(np.float32)
            total += array
            member = io.BytesIO()
            np.save(member, array)
            for suffix, data in ((".npy", member.getvalue()), (".cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"{i:06d}{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), total


def seal_shard(path: Path, key: bytes, key_ref: str, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        encrypt_stream(key, data, out, key_ref=key_ref, chunk_size=4096)


def node_toml(
    *, server: str, ca: Path, sim_pki: Path, socket: Path, tee: str = "snp", measurement: bytes, name: str
) -> str:
    return (
        f'server = "{server}"\nnode_name = "{name}"\nca = "{ca}"\nprovider = "simulated-{tee}"\n'
        f'sim_pki = "{sim_pki}"\nsim_measurement = "{measurement.hex()}"\ngroups = ["trainers"]\n\n'
        f'[agent]\nsocket = "{socket}"\nsocket_mode = "0600"\nrevocation_action = "deny"\ncheck_interval = 30\n'
    )


def write_pki(pki: SimulatedPki, directory: Path) -> Path:
    """``directory/pki.json`` (0600): the in-memory PKI the control plane already trusts, for a node
    process (``--sim-pki directory``)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / "pki.json"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(dump_pki(pki))
    return directory


def run_training(
    *, node_config: Path, shard: Path, checkpoint: Path, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """examples/train.py as its own process under ``sovereign node exec`` (which starts the agent)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    return subprocess.run(
        [sys.executable, "-m", "sovereign", "node", "exec", "--config", str(node_config), "--keys",
         "dataset/train", "--", sys.executable, str(EXAMPLE), str(shard), str(checkpoint)],
        env=env, capture_output=True, text=True, check=False, timeout=timeout, cwd=EXAMPLE.parents[1],
    )  # fmt: skip
