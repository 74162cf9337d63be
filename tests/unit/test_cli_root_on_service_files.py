"""Run as root on an installed host, the commands that write the collateral store or the database refuse
when a service user owns them (root would leave files the service cannot read: README step 5 run as
root left a root-owned 0600 index.json in the store) and name the command to run as that user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sovereign.cli import _installed, main

NOBODY = 65534
AS_ROOT = os.geteuid() == 0  # the real one: tests below pretend to be root


def _service_owned(folder: Path) -> Path:
    folder.mkdir()
    if AS_ROOT:
        os.chown(folder, NOBODY, NOBODY)  # else the folder is ours, and we are not root either
    return folder


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sovereign.cli._installed.os.geteuid", lambda: 0)


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, str]:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 1
    return dict(json.loads(capsys.readouterr().out)["error"])


@pytest.mark.usefixtures("as_root")
def test_root_does_not_import_into_a_service_users_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _service_owned(tmp_path / "collateral")
    item = tmp_path / "item.pem"
    item.write_text("not read: refused first\n")
    error = _error(capsys, ["collateral", "import", "--store", str(store), str(item)])
    assert error["code"] == "COLLATERAL_STORE_ERROR" and str(store) in error["message"]
    assert "prefix it with 'runuser -u " in error["hint"]
    assert list(store.iterdir()) == []


@pytest.mark.usefixtures("as_root")
def test_root_does_not_change_keys_in_a_service_users_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _service_owned(tmp_path / "data")
    db = folder / "sovereign.db"
    # checked before the database is opened or OpenBao is asked (none is configured)
    monkeypatch.setenv("SOVEREIGN_BAO_ADDR", "http://127.0.0.1:9")
    error = _error(capsys, ["key", "create", "dataset/x", "--kind", "dataset", "--db", str(db)])
    assert error["code"] == "STORAGE_ERROR" and "'runuser -u " in error["hint"]
    assert list(folder.iterdir()) == []


def test_other_users_and_root_owned_paths_are_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _service_owned(tmp_path / "collateral")
    monkeypatch.setattr("sovereign.cli._installed.os.geteuid", lambda: NOBODY)  # not root: nothing to protect
    _installed.refuse_root_on_service_files(store, "the collateral store", "COLLATERAL_STORE_ERROR")
    monkeypatch.setattr("sovereign.cli._installed.os.geteuid", lambda: 0)
    owned_by_root = tmp_path / "root-owned"
    owned_by_root.mkdir()
    if AS_ROOT:  # root's own folder: root may write it
        _installed.refuse_root_on_service_files(owned_by_root / "x.db", "the database", "STORAGE_ERROR")


@pytest.mark.usefixtures("as_root")
def test_root_does_not_bootstrap_into_a_service_users_credentials_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _service_owned(tmp_path / "openbao")
    argv = ["kms", "bootstrap", "--addr", "http://127.0.0.1:9", "--token-file", "-", "--out", str(out)]
    error = _error(capsys, argv)  # refused before the token is read or OpenBao is called
    assert error["code"] == "KMS_CONFIG_INVALID" and str(out) in error["message"]
    assert list(out.iterdir()) == []
