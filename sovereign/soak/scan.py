"""The key-material scan: no released data key may appear in any file of the run, in any of the forms a
careless log line or column would hold it (raw, hex, base64 and base64url at any alignment)."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sovereign.soak.checker import Violation, ViolationKind

MAX_FILE = 512 << 20  # larger files are read in windows that overlap by the longest pattern


def forms(key: bytes) -> list[bytes]:
    """Encodings of ``key`` to look for. Base64 of a key inside a longer blob depends on its offset modulo
    3, so each alignment is encoded and only the characters that depend on the key alone are kept."""
    out = [key, key.hex().encode(), key.hex().upper().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(bytes(pad) + key + bytes(3))
            start = (pad * 4 + 2) // 3  # first character that depends on key bytes only
            end = ((pad + len(key)) * 4) // 3  # last one, exclusive
            out.append(text[start:end])
    return out


@dataclass
class ScanReport:
    files: int = 0
    bytes: int = 0
    keys: int = 0
    hits: list[str] = field(default_factory=list)  # "path (forms [n, ...])", never the key itself

    def to_dict(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "keys": self.keys, "hits": self.hits}

    def violations(self) -> list[Violation]:
        return [
            Violation(ViolationKind.KEY_MATERIAL_IN_FILE, f"released key material in {h}") for h in self.hits
        ]


def scan(roots: Iterable[Path], keys: Iterable[bytes]) -> ScanReport:
    distinct = set(keys)
    patterns = [(n, f) for key in distinct for n, f in enumerate(forms(key))]
    report = ScanReport(keys=len(distinct))
    longest = max((len(f) for _, f in patterns), default=0)
    seen: set[Path] = set()  # the roots may nest: each file once
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            report.files += 1
            found: set[int] = set()
            try:
                with path.open("rb") as f:
                    tail = b""
                    while chunk := f.read(MAX_FILE):
                        report.bytes += len(chunk)
                        window = tail + chunk
                        found.update(n for n, pattern in patterns if pattern in window)
                        tail = window[-longest:] if longest else b""
            except OSError:
                continue
            if found:
                report.hits.append(f"{path} (forms {sorted(found)})")
    return report
