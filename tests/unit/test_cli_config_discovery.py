"""Where the CLI finds the control plane's database, collateral store and endpoints on an installed host
($SOVEREIGN_CONFIG, else /etc/sovereign/sovereign.toml), that read-only commands never create a database
or a folder, and that ``serve`` reports every missing prerequisite in one start."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kms.config import load_config
from kms.errors import KmsError
from sovereign.cli import _installed, main


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "SOVEREIGN_CONFIG",
        "SOVEREIGN_DB",
        "SOVEREIGN_COLLATERAL",
        "SOVEREIGN_ADMIN_ADDR",
        "SOVEREIGN_CA",
    ):
        monkeypatch.delenv(name, raising=False)
    _installed._settings.cache_clear()


def _installed_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    config = tmp_path / "etc" / "sovereign.toml"
    config.parent.mkdir()
    config.write_text(body)
    monkeypatch.setenv("SOVEREIGN_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    return config


def test_operator_commands_read_the_installed_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "srv"
    _installed_config(
        tmp_path,
        monkeypatch,
        f'db = "{data}/sovereign.db"\ncollateral = "{data}/collateral"\nadmin_listen = "0.0.0.0:9445"\n'
        f'tls_ca = "{data}/ca.pem"\nbao_addr = "https://bao.example:8200"\n',
    )
    assert _installed.database_target() == f"{data}/sovereign.db"
    assert _installed.collateral_store_path() == data / "collateral"
    assert _installed.operator_address() == "127.0.0.1:9445"  # a wildcard listen is called on loopback
    assert _installed.operator_ca() == data / "ca.pem"
    assert _installed.bao_endpoint("bao_addr") == "https://bao.example:8200"
    monkeypatch.setenv("SOVEREIGN_DB", "/elsewhere.db")  # the environment still wins
    assert _installed.database_target() == "/elsewhere.db"


def test_without_a_config_the_development_defaults_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kms.config.INSTALLED_CONFIG", tmp_path / "absent.toml")
    assert _installed.database_target() == "var/sovereign.db"
    assert _installed.operator_address() == "127.0.0.1:8445"
    assert _installed.operator_ca() is None


def test_collateral_import_fills_the_store_the_service_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "srv" / "collateral"
    _installed_config(tmp_path, monkeypatch, f'collateral = "{store}"\n')
    assert main(["collateral", "status", "--json"]) == 1  # no store yet: a coded error
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "COLLATERAL_STORE_ERROR"
    assert main(["collateral", "import", "--json", str(tmp_path / "etc" / "sovereign.toml")]) == 1
    capsys.readouterr()  # not collateral, refused; what matters is where it looked:
    assert not (tmp_path / "var").exists()


def test_a_broken_config_is_a_coded_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _installed_config(tmp_path, monkeypatch, "db = [\n")
    assert main(["key", "list", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "SERVER_CONFIG_INVALID" and str(config) in error["message"]
    monkeypatch.setenv("SOVEREIGN_CONFIG", str(tmp_path / "nope.toml"))
    _installed._settings.cache_clear()
    assert main(["key", "list"]) == 1
    assert "SOVEREIGN_CONFIG" in capsys.readouterr().err


READ_ONLY = [
    ["key", "list", "--db", "{missing}/x.db"],
    ["key", "show", "k", "--db", "{missing}/x.db"],
    ["key", "disable", "k", "--db", "{missing}/x.db"],
    ["key", "list", "--db", "sqlite:///{missing}/x.db"],
    ["collateral", "list", "--store", "{missing}/store"],
    ["collateral", "status", "--store", "{missing}/store"],
    [
        "dataset",
        "encrypt",
        __file__,
        "{missing}/out",
        "--key",
        "k",
        "--db",
        "{missing}/x.db",
        "--addr",
        "http://127.0.0.1:9",
    ],
]


@functools.cache
def _ids() -> list[str]:
    return [" ".join(a[:2]) + (" url" if "sqlite:" in " ".join(a) else "") for a in READ_ONLY]


@pytest.mark.parametrize("argv", READ_ONLY, ids=_ids())
def test_read_only_commands_never_create_a_database_or_folder(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing"
    assert main([a.format(missing=missing) for a in argv] + ["--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["error"]["code"] in {"STORAGE_ERROR", "COLLATERAL_STORE_ERROR"}
    assert str(missing) in doc["error"]["message"] and doc["error"]["hint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no database, no ./var


def test_read_only_default_paths_create_nothing_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("kms.config.INSTALLED_CONFIG", tmp_path / "absent.toml")
    assert main(["key", "list"]) == 1
    assert "no database at var/sovereign.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_serve_reports_every_missing_prerequisite_at_once() -> None:
    with pytest.raises(KmsError) as info:
        load_config(None, {}, {})
    message = info.value.message
    assert info.value.code.value == "SERVER_CONFIG_INVALID"
    for missing in ("TLS is required", "no OpenBao address", "no OpenBao credentials", "operator sign-in"):
        assert missing in message
    assert message.startswith("4 problems")


def test_serve_prints_them_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("kms.config.INSTALLED_CONFIG", tmp_path / "absent.toml")
    for name in ("SOVEREIGN_BAO_ADDR", "SOVEREIGN_OIDC_ISSUER", "SOVEREIGN_DEV_TLS", "SOVEREIGN_TLS_CERT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "error: SERVER_CONFIG_INVALID: 4 problems" in err
    assert "--oidc-issuer" in err and "--bao-addr" in err and "--tls-cert" in err


def test_a_policy_file_that_differs_at_restart_names_the_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kms.clock import ManualClock
    from kms.sql import open_store
    from kms.usecases.policy_source import PolicySource

    shipped = Path(__file__).resolve().parents[2] / "policies" / "defaults"
    source = PolicySource(open_store(tmp_path / "x.db"), ManualClock(datetime.now(UTC)))
    source.seed((shipped / "default.toml").read_text(), "default.toml")
    with caplog.at_level("WARNING"):
        source.seed((shipped / "demo.toml").read_text(), "demo.toml")
    assert "sovereign admin policy put demo.toml --expected-version 1" in caplog.text
    assert "Admin.PutPolicy" not in caplog.text


def test_the_data_owner_reaches_openbao_with_the_installed_address_and_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walking the air-gapped install: the owner's seal failed with an SSL error because it took the
    installed bao_addr but not bao_ca_cert (the key commands took both)."""
    from types import SimpleNamespace

    from sovereign.cli import dataset

    for name in ("SOVEREIGN_BAO_ADDR", "SOVEREIGN_BAO_CA_CERT", "SOVEREIGN_BAO_CACERT"):
        monkeypatch.delenv(name, raising=False)
    _installed_config(
        tmp_path,
        monkeypatch,
        'bao_addr = "https://127.0.0.1:8200"\nbao_ca_cert = "/etc/sovereign/tls/bao-ca.pem"\n',
    )
    secret = tmp_path / "owner-secret-id"
    secret.write_text("s\n")
    args = SimpleNamespace(owner_role_id="r", owner_secret_id_file=str(secret), addr=None, ca_cert=None)
    settings = dataset._owner_settings(args)  # type: ignore[arg-type]
    assert settings is not None
    assert (settings.addr, settings.ca_cert) == ("https://127.0.0.1:8200", "/etc/sovereign/tls/bao-ca.pem")
