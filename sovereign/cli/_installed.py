"""Where the operator commands find the control plane's database, collateral store and endpoints.

Each setting comes from its flag, else its environment variable, else the configuration this host runs
``serve`` with (``$SOVEREIGN_CONFIG`` or the installed ``/etc/sovereign/sovereign.toml``, see
``kms.config.config_path``), else the development default relative to the current folder. So on an
installed host ``sovereign collateral import`` fills the store the service reads, and ``sovereign key
list`` reads the service's database.
"""

from __future__ import annotations

import functools
import os
import pwd
from pathlib import Path
from typing import Any

from attestation.coded import CodedError
from kms.config import OPTION, config_path, read_settings

DEV_DB = "var/sovereign.db"
DEV_COLLATERAL = "var/collateral"
DEV_OPERATOR = "127.0.0.1:8445"
WILDCARD_HOSTS = ("0.0.0.0", "[::]", "::")  # noqa: S104 (hosts serve listens on, never bound here)


@functools.cache
def _settings(path: Path | None) -> dict[str, Any]:
    return read_settings(path) if path is not None else {}


def installed(name: str) -> Any:
    """Option ``name`` of the host's configuration; None when it has no configuration or leaves the
    option unset."""
    return _settings(config_path()).get(name)


def source() -> str:
    """How to name the configuration in hints."""
    path = config_path()
    return (
        str(path)
        if path is not None
        else "no installed config (/etc/sovereign/sovereign.toml, $SOVEREIGN_CONFIG)"
    )


def database_target() -> str:
    return os.environ.get("SOVEREIGN_DB") or installed("db") or DEV_DB


def collateral_store_path() -> Path:
    return Path(os.environ.get("SOVEREIGN_COLLATERAL") or installed("collateral") or DEV_COLLATERAL)


def operator_address() -> str:
    """The operator port to call: serve's admin_listen, a wildcard host called on loopback."""
    env = os.environ.get("SOVEREIGN_ADMIN_ADDR")
    if env:
        return env
    listen = installed("admin_listen")
    if not listen:
        return DEV_OPERATOR
    host, _, port = str(listen).rpartition(":")
    return f"127.0.0.1:{port}" if host in WILDCARD_HOSTS else str(listen)


def operator_ca() -> Path | None:
    """The CA to pin for the operator port: $SOVEREIGN_CA, else the CA serve names (tls_ca), else the
    dev CA serve made (DEV_TLS/ca.pem)."""
    env = os.environ.get("SOVEREIGN_CA")
    if env:
        return Path(env)
    if installed("tls_ca"):
        return Path(installed("tls_ca"))
    if installed("dev_tls"):
        return Path(installed("dev_tls")) / "ca.pem"
    return None


def bao_endpoint(name: str) -> str | None:
    """bao_addr or bao_ca_cert of the host's configuration (only where to reach OpenBao: credentials
    stay the operator's own)."""
    assert name in ("bao_addr", "bao_ca_cert") and name in OPTION
    value = installed(name)
    return str(value) if value else None


def refuse_root_on_service_files(path: Path, what: str, code: str) -> None:
    """Refuse to write ``path`` as root when a service user owns it (or the folder it would be made in):
    root would leave files (an index, objects, the database's -wal and -shm) the service cannot read.
    The hint says how to run it as that user."""
    if os.geteuid() != 0:
        return
    target = next((p for p in (path, *path.parents) if p.exists()), None)
    if target is None:
        return
    uid = target.stat().st_uid
    if uid == 0:
        return
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = str(uid)
    raise CodedError(
        code,
        f"{what} {path} belongs to {owner}: as root this command would leave files {owner} cannot read",
        f"run the same command as the service user: prefix it with 'runuser -u {owner} --'",
    )
