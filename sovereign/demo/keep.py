"""``sovereign demo --keep DIR``: the work folder an auditor can verify later, private to its owner.

What the demo leaves for the auditor (``lifecycle._audit_steps`` writes them): the ledger export, the
audit public key (OpenBao's transit key, as ``bao read -format=json`` prints it), the checkpoint seen
before exporting (freshness), and OpenBao's own audit log. The folder also holds the demo's database,
sealed files and the simulator's private keys, so everything in it is owner-only: the run works under
umask 077 and every file is 0600 and every folder 0700 at the end, whatever modes a child process chose.
No plaintext is written to it: the dataset is sealed from memory, the nodes hash what they decrypt, and
the model output's plaintext is removed once sealed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeptForAudit:
    export: Path
    public_key: Path
    checkpoint: Path
    bao_audit_log: Path

    @classmethod
    def in_folder(cls, folder: Path) -> KeptForAudit:
        return cls(
            folder / "audit-export.jsonl",
            folder / "audit-public-key.json",
            folder / "audit-checkpoint.json",
            folder / "bao" / "audit.log",
        )

    def verify_command(self) -> str:
        return (
            f"sovereign audit verify {self.export} --public-key {self.public_key} "
            f"--checkpoint {self.checkpoint}"
        )

    def reconcile_command(self) -> str:
        return f"sovereign audit reconcile --export {self.export} --bao-log {self.bao_audit_log}"


@contextmanager
def private_folder(folder: Path) -> Iterator[Path]:
    """``folder`` (made 0700 if new, else tightened to 0700) with the process umask at 077 while the
    demo runs in it; on the way out every file is 0600 and every folder 0700, errors included."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    old = os.umask(0o077)
    try:
        yield folder
    finally:
        os.umask(old)
        owner_only(folder)


def owner_only(folder: Path) -> None:
    """Files 0600 and folders 0700 under ``folder``; symbolic links are left alone (never followed)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o700)
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            os.chmod(path, 0o700 if stat.S_ISDIR(mode) else 0o600)
