"""Core dumps of the soak's processes, so the key-material scan can look inside them.

The kernel's ``core_pattern`` is system-wide and is not changed here. It is used only when it names a
plain file in the crashing process's working directory (no ``|`` handler, no ``/``); then the soak raises
its own soft ``RLIMIT_CORE`` to the hard limit for the run (its children, ``serve`` and OpenBao, inherit
it) and runs each ``serve`` in a folder of its own under the work directory. Core files are recognised by
their ELF header (type ``ET_CORE``), wherever they land under the scanned roots. ``serve`` itself refuses
core dumps (its memory holds released keys), so a ``serve-abort`` checks that none is left.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
ELF_MAGIC = b"\x7fELF"
ET_CORE = 4


@dataclass
class CoreSetup:
    pattern: str
    enabled: bool
    reason: str
    previous: tuple[int, int] | None = None  # the soft and hard RLIMIT_CORE before the run
    found: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "core_pattern": self.pattern,
            "enabled": self.enabled,
            "reason": self.reason,
            "core_files": len(self.found),
            "files": self.found,
        }


def writes_in_cwd(pattern: str) -> bool:
    """Whether ``core_pattern`` makes the kernel write a file in the crashing process's working folder."""
    pattern = pattern.strip()
    return bool(pattern) and not pattern.startswith("|") and "/" not in pattern


def enable(pattern_file: Path = CORE_PATTERN) -> CoreSetup:
    try:
        pattern = pattern_file.read_text().strip()
    except OSError as err:
        return CoreSetup("", False, f"cannot read {pattern_file}: {err.strerror}")
    if not writes_in_cwd(pattern):
        return CoreSetup(pattern, False, "core_pattern does not write a file in the working folder: not used")
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        return CoreSetup(pattern, False, "the hard RLIMIT_CORE is 0: no process may dump core")
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    return CoreSetup(pattern, True, "RLIMIT_CORE raised to the hard limit for the run", (soft, hard))


def restore(setup: CoreSetup) -> None:
    if setup.previous is not None:
        resource.setrlimit(resource.RLIMIT_CORE, setup.previous)
        setup.previous = None


def is_core(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(18)
    except OSError:
        return False
    if len(head) < 18 or head[:4] != ELF_MAGIC:
        return False
    e_type = int.from_bytes(head[16:18], "little" if head[5] == 1 else "big")  # EI_DATA: 1 little-endian
    return e_type == ET_CORE


def find_cores(roots: Iterable[Path]) -> list[Path]:
    """Core files under ``roots`` (which may nest), each once."""
    found = {
        p.resolve() for root in roots if root.exists() for p in root.rglob("*") if p.is_file() and is_core(p)
    }
    return sorted(found)
