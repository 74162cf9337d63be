"""Offline bundle building blocks: lock parsing, reproducible wheel/tar, manifest safety (pure/temp)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from sovereign.bundle import archive, lockfile
from sovereign.bundle.installer import FORMAT, BundleCode, BundleError, parse_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_lock_parses_every_entry_with_hashes_and_markers() -> None:
    lock = lockfile.parse_lock((ROOT / "requirements.lock").read_text())
    assert lock["cryptography"].version == "50.0.2" and lock["cryptography"].hashes
    env = lockfile.target_environment("3.11", "x86_64")
    assert lock["psycopg-binary"].applies(env) and not lock["colorama"].applies(env)
    assert all(e.text.startswith(e.text.split("==")[0]) for e in lock.values())


def test_wheel_normalisation_is_independent_of_timestamps_and_order(tmp_path: Path) -> None:
    outs = []
    for n, (stamp, names) in enumerate(
        [((2020, 1, 1, 0, 0, 0), ["b.py", "a.py"]), ((2024, 5, 5, 5, 5, 6), ["a.py", "b.py"])]
    ):
        src = tmp_path / f"in{n}.whl"
        with zipfile.ZipFile(src, "w") as z:
            for name in names:
                z.writestr(zipfile.ZipInfo(name, stamp), name.encode())
            z.writestr(zipfile.ZipInfo("x-1.dist-info/RECORD", stamp), b"r")
        out = tmp_path / f"out{n}.whl"
        archive.normalise_wheel(src, out, 1_700_000_000)
        outs.append(hashlib.sha256(out.read_bytes()).hexdigest())
        assert zipfile.ZipFile(out).namelist() == ["a.py", "b.py", "x-1.dist-info/RECORD"]
    assert outs[0] == outs[1]


def test_tar_depends_only_on_content(tmp_path: Path) -> None:
    digests = []
    for n in range(2):
        src = tmp_path / f"s{n}"
        (src / "d").mkdir(parents=True)
        (src / "d" / "f").write_text("x")
        (src / "install.sh").write_text("#!/bin/sh\n")
        out = tmp_path / f"{n}.tar.gz"
        archive.deterministic_tar(src, out, "top", 1_700_000_000, frozenset({"install.sh"}))
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    top = archive.safe_extract(tmp_path / "0.tar.gz", tmp_path / "x")
    assert (top / "d" / "f").read_text() == "x" and (top / "install.sh").stat().st_mode & 0o111


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a/./b", "a//b", ""])
def test_manifest_refuses_unsafe_paths(path: str) -> None:
    doc = {"format": FORMAT, "files": [{"path": path, "size": 1, "sha256": "0" * 64}]}
    with pytest.raises(BundleError) as err:
        parse_manifest(json.dumps(doc).encode())
    assert err.value.code is BundleCode.BUNDLE_MANIFEST_INVALID
