"""A verified bundle tarball extracts on a Python without tarfile's ``data`` filter too (Debian 12's
3.11.2: walking the documented upgrade, ``sovereign bundle install X.tar.gz`` refused to run there):
plain files and folders only, anything else refused before a byte is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sovereign.bundle.installer import BundleCode, BundleError, extract_archive


def _tarball(path: Path, extra: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in (
            ("top/install.sh", b"#!/bin/sh\n", 0o755),
            ("top/deploy/a.toml", b"a = 1\n", 0o644),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return path


@pytest.fixture(params=["filter", "no filter"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return str(request.param)


def test_plain_files_extract_with_their_modes(tmp_path: Path, python: str) -> None:
    top = extract_archive(_tarball(tmp_path / "b.tar.gz"), tmp_path / "out")
    assert top == tmp_path / "out" / "top"
    assert (top / "deploy" / "a.toml").read_text() == "a = 1\n"
    assert (top / "install.sh").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("kind", ["symlink", "parent", "absolute", "device"])
def test_anything_but_plain_files_is_refused_before_writing(tmp_path: Path, python: str, kind: str) -> None:
    info = tarfile.TarInfo({"parent": "top/../../evil", "absolute": "/tmp/evil"}.get(kind, "top/odd"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "device":
        info.type = tarfile.CHRTYPE
    else:
        info.size = 1
    out = tmp_path / "out"
    with pytest.raises(BundleError) as refused:
        extract_archive(_tarball(tmp_path / "b.tar.gz", info), out)
    assert refused.value.code is BundleCode.BUNDLE_MANIFEST_INVALID
    if python == "no filter":  # checked before anything is written (the filter may write the files before)
        assert not out.exists() or not any(out.rglob("*"))
