"""Byte-for-byte reproducible archives: wheels re-zipped with sorted entries and fixed timestamps, and
the bundle tarball with sorted members, fixed mtime, uid/gid 0 and a gzip header without a time."""

from __future__ import annotations

import gzip
import os
import tarfile
import time
import zipfile
from pathlib import Path

from sovereign.bundle.installer import extract_archive

ZIP_EPOCH_MIN = 315532800  # 1980-01-01, the earliest time a zip entry can hold


def zip_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(max(epoch, ZIP_EPOCH_MIN))
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec - t.tm_sec % 2)


def normalise_wheel(src: Path, dest: Path, epoch: int) -> None:
    """Re-write a wheel with sorted entries, one timestamp and fixed permissions (RECORD stays valid:
    contents are unchanged)."""
    stamp = zip_time(epoch)
    with zipfile.ZipFile(src) as zin:
        names = sorted(zin.namelist(), key=lambda n: (".dist-info/" in n, n))  # dist-info last (PEP 427)
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zout:
            for name in names:
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (0o755 if zin.getinfo(name).external_attr >> 16 & 0o111 else 0o644) << 16
                info.create_system = 3
                zout.writestr(info, zin.read(name), compresslevel=9)


def deterministic_tar(src: Path, dest: Path, top: str, epoch: int, executables: frozenset[str]) -> None:
    """``src``'s regular files (sorted) under ``top/`` in a .tar.gz that depends only on their bytes."""
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    dirs = sorted({str(Path(f).parent) for f in files} - {"."} | _parents(files))
    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in [top, *(f"{top}/{d}" for d in dirs)]:
            tar.addfile(_info(rel, tarfile.DIRTYPE, 0o755, 0, epoch))
        for rel in files:
            path = src / rel
            mode = 0o755 if rel in executables else 0o644
            with open(path, "rb") as f:
                tar.addfile(_info(f"{top}/{rel}", tarfile.REGTYPE, mode, os.path.getsize(path), epoch), f)


def _parents(files: list[str]) -> set[str]:
    out: set[str] = set()
    for f in files:
        parent = Path(f).parent
        while str(parent) != ".":
            out.add(parent.as_posix())
            parent = parent.parent
    return out


def _info(name: str, kind: bytes, mode: int, size: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract with the 'data' filter (no absolute paths, links out, devices); returns the top folder.
    Only for a tarball already checked with ``installer.verify_archive``."""
    return extract_archive(archive, dest)
