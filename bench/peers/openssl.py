"""``openssl speed`` as a peer: parse its machine-readable (``-mr``) output."""

from __future__ import annotations

import shutil
import subprocess

from bench.peers import PeerMissing


def _speed(args: list[str], seconds: int) -> list[list[str]]:
    binary = shutil.which("openssl")
    if binary is None:
        raise PeerMissing("the openssl command is not on PATH")
    proc = subprocess.run(
        [binary, "speed", "-mr", "-seconds", str(seconds), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise PeerMissing(f"openssl speed {' '.join(args)} failed: {proc.stderr.strip()[-200:]}")
    return [line.split(":") for line in proc.stdout.splitlines() if line.startswith("+F")]


def ecdsa_p384_verify_rate(seconds: int = 1) -> float:
    """Verifications per second from ``openssl speed ecdsap384`` (one core)."""
    # +F4:<index>:<bits>:<sign/s>:<verify/s>
    for fields in _speed(["ecdsap384"], seconds):
        if fields[0] == "+F4" and fields[2] == "384":
            return float(fields[4])
    raise PeerMissing("openssl speed ecdsap384 printed no +F4 line for 384 bits")


def aes_256_gcm_rate(seconds: int = 1, block: int = 16384) -> float:
    """Bytes per second from ``openssl speed -evp aes-256-gcm`` at one block size (encryption)."""
    # +F:<index>:<cipher>:<bytes/s at each requested size>
    for fields in _speed(["-bytes", str(block), "-evp", "aes-256-gcm"], seconds):
        if fields[0] == "+F" and fields[2].upper() == "AES-256-GCM":
            return float(fields[3])
    raise PeerMissing("openssl speed -evp aes-256-gcm printed no +F line")
