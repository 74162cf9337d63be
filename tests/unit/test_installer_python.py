"""The installer refuses a Python the service users cannot run (found walking the air-gapped install on a
host whose python3 was pyenv's under /root: the install succeeded, then every service failed with
"Permission denied")."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sovereign.bundle.installer import BundleCode, BundleError, check_python_shared


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder others may search (pytest's own tmp_path sits in a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="installer-python-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def _python_under(tmp_path: Path, home_mode: int) -> tuple[str, str]:
    home = tmp_path / "home"
    prefix = home / "pyenv" / "3.11"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    exe = prefix / "bin" / "python3.11"
    exe.write_text("")
    home.chmod(home_mode)
    return str(exe), str(prefix)


def test_a_python_in_a_private_home_is_refused(shared_tmp: Path) -> None:
    tmp_path = shared_tmp
    exe, prefix = _python_under(tmp_path, 0o700)
    try:
        with pytest.raises(BundleError) as refused:
            check_python_shared(exe, prefix)
    finally:
        (tmp_path / "home").chmod(0o755)
    assert refused.value.code is BundleCode.BUNDLE_LAYOUT_INVALID
    assert f"{tmp_path / 'home'} is not searchable by others" in refused.value.message
    assert "SOVEREIGN_PYTHON=/usr/bin/python3.11" in refused.value.hint


def test_a_shared_python_passes(shared_tmp: Path) -> None:
    exe, prefix = _python_under(shared_tmp, 0o755)
    check_python_shared(exe, prefix)
