"""``sovereign serve`` configuration: defaults < TOML file < SOVEREIGN_* environment < command line.

Every option is declared once in ``OPTIONS`` (name, type, default, help); the CLI, the environment
names and the TOML keys all come from that table, so ``--help`` documents every option.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms.errors import Code, KmsError


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "SOVEREIGN_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("listen", str, "127.0.0.1:8443", "node-facing address HOST:PORT (Attestation, KeyRelease)"),
    Option(
        "release_listen",
        str,
        "127.0.0.1:8444",
        "KeyRelease address HOST:PORT (mutual TLS with the node client certificates of --node-ca)",
    ),
    Option(
        "admin_listen", str, "127.0.0.1:8445", "operator address HOST:PORT (Admin, Audit; TLS + bearer token)"
    ),
    Option(
        "tls_cert",
        str,
        "",
        "server certificate chain (PEM) for every port; a replaced file is used from the next handshake",
    ),
    Option("tls_key", str, "", "server private key (PEM); reloaded like --tls-cert"),
    Option("node_ca", str, "var/node-ca", "directory of the node client CA (made on first start; key 0600)"),
    Option("node_cert_ttl", int, 3600, "node client certificate lifetime, seconds (at most the lease)"),
    Option(
        "oidc_issuer", str, "", "Keycloak realm URL https://HOST/realms/REALM whose tokens operators send"
    ),
    Option("oidc_audience", str, "sovereign", "client id the operator tokens must be for (aud or azp)"),
    Option(
        "oidc_server_url",
        str,
        "",
        "Keycloak base URL to fetch the realm keys from (default: from the issuer)",
    ),
    Option("oidc_jwks_file", str, "", "the realm's JWKS saved to a file (air-gapped sites; no fetch)"),
    Option("oidc_ca_file", str, "", "CA bundle for Keycloak's TLS certificate"),
    Option(
        "role_map", str, "", "role map file (JSON or TOML, see docs/keycloak.md); default: the four roles"
    ),
    Option(
        "two_person_actions",
        str,
        "PutPolicy,DestroyKey",
        "comma-separated Admin methods held for a second operator ('' for none)",
    ),
    Option("two_person_ttl", int, 86400, "seconds a held change waits for its second operator"),
    Option("dev_tls", str, "", "make a dev CA + loopback server certificate in this directory if absent"),
    Option("insecure_dev", bool, False, "serve the node port WITHOUT TLS (development only)"),
    Option("db", str, "var/sovereign.db", "SQLite database file (or an SQLAlchemy URL)"),
    Option("collateral", str, "var/collateral", "offline collateral store directory"),
    Option("policy", str, "", "policy TOML; seeds an empty database (later changes: Admin.PutPolicy)"),
    Option("trust", str, "production", "trust profile: 'production' or a simulation trust JSON file"),
    Option(
        "dev_trust",
        bool,
        False,
        "accept a --trust file other than 'production' (simulator roots; development only)",
    ),
    Option("bao_addr", str, "", "OpenBao address, e.g. https://127.0.0.1:8200"),
    Option("bao_role_id", str, "", "OpenBao AppRole role id"),
    Option("bao_secret_id_file", str, "", "file holding the AppRole secret id"),
    Option("bao_token_file", str, "", "file holding an OpenBao token (dev modes only)"),
    Option("bao_ca_cert", str, "", "CA bundle to verify OpenBao's TLS certificate"),
    Option(
        "failover_budget",
        float,
        15.0,
        "seconds one OpenBao call may spend finding a new active raft member before it fails closed",
    ),
    Option("nonce_ttl", int, 60, "challenge nonce lifetime, seconds"),
    Option("clock_skew", int, 120, "accepted release timestamp skew, +/- seconds"),
    Option("max_message_bytes", int, 256 << 10, "largest request accepted on the node port, bytes"),
    Option("workers", int, 16, "threads for Register/Renew (evidence verification)"),
    Option("metrics_port", int, 0, "serve Prometheus /metrics on 127.0.0.1:PORT (0: off)"),
    Option(
        "release_window_ms",
        float,
        30.0,
        "longest a release batch gathers under load (one OpenBao decrypt and one commit per batch); "
        "a batch nobody joined for 5 ms goes at once",
    ),
    Option("denial_window_ms", float, 2.0, "how long a denial record waits for others to commit with"),
    Option(
        "processes",
        int,
        1,
        "node-facing server processes sharing the port (SO_REUSEPORT), all stateless over the same "
        "database and OpenBao; only the first serves Admin and metrics",
    ),
    Option(
        "replica", bool, False, "internal: run as a replica started by --processes (no Admin, no metrics)"
    ),
)
_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8443"
    release_listen: str = "127.0.0.1:8444"
    admin_listen: str = "127.0.0.1:8445"
    tls_cert: str = ""
    tls_key: str = ""
    node_ca: str = "var/node-ca"
    node_cert_ttl: int = 3600
    oidc_issuer: str = ""
    oidc_audience: str = "sovereign"
    oidc_server_url: str = ""
    oidc_jwks_file: str = ""
    oidc_ca_file: str = ""
    role_map: str = ""
    two_person_actions: str = "PutPolicy,DestroyKey"
    two_person_ttl: int = 86400
    dev_tls: str = ""
    insecure_dev: bool = False
    db: str = "var/sovereign.db"
    collateral: str = "var/collateral"
    policy: str = ""
    trust: str = "production"
    dev_trust: bool = False
    bao_addr: str = ""
    bao_role_id: str = ""
    bao_secret_id_file: str = ""
    bao_token_file: str = ""
    bao_ca_cert: str = ""
    failover_budget: float = 15.0
    nonce_ttl: int = 60
    clock_skew: int = 120
    max_message_bytes: int = 256 << 10
    workers: int = 16
    metrics_port: int = 0
    release_window_ms: float = 30.0
    denial_window_ms: float = 2.0
    processes: int = 1
    replica: bool = False

    @property
    def dev_mode(self) -> bool:
        return self.insecure_dev or bool(self.dev_tls)


def _bad(message: str) -> KmsError:
    return KmsError(message, code=Code.SERVER_CONFIG_INVALID, hint="see: sovereign serve --help")


def _coerce(option: Option, value: Any, source: str) -> Any:
    try:
        if option.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if option.type is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
        return option.type(value)
    except (TypeError, ValueError):
        raise _bad(f"{source}: {option.name} must be a {option.type.__name__}") from None


def load_config(
    file: Path | None, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> ServerConfig:
    values: dict[str, Any] = {}
    if file is not None:
        try:
            doc = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise _bad(f"cannot read config {file}: {type(exc).__name__}: {exc}") from None
        for key, value in doc.items():
            option = _BY_NAME.get(key.replace("-", "_"))
            if option is None:
                raise _bad(f"{file}: unknown option {key!r}")
            values[option.name] = _coerce(option, value, str(file))
    env = os.environ if environ is None else environ
    for option in OPTIONS:
        if option.env in env:
            values[option.name] = _coerce(option, env[option.env], option.env)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(_BY_NAME[name], value, _BY_NAME[name].flag)
    config = dataclasses.replace(ServerConfig(), **values)
    validate(config)
    return config


def validate(c: ServerConfig) -> None:
    for name in ("listen", "release_listen", "admin_listen"):
        host, _, port = getattr(c, name).rpartition(":")
        if not host or not port.isdigit():
            raise _bad(f"{name} must be HOST:PORT, got {getattr(c, name)!r}")
    if c.insecure_dev and (c.dev_tls or c.tls_cert):
        raise _bad("--insecure-dev cannot be combined with TLS options")
    if not c.insecure_dev and not c.dev_tls and not (c.tls_cert and c.tls_key):
        raise _bad("TLS is required: give --tls-cert and --tls-key (or --dev-tls DIR for development)")
    if c.trust != "production" and not c.dev_trust:
        raise _bad(
            f"--trust {c.trust!r} is not the production trust profile: it pins roots other than AMD's and "
            "Intel's, which only development may do; add --dev-trust, or omit --trust in production"
        )
    if not c.bao_addr:
        raise _bad("no OpenBao address: set --bao-addr or SOVEREIGN_BAO_ADDR")
    approle = bool(c.bao_role_id or c.bao_secret_id_file)
    if approle and not (c.bao_role_id and c.bao_secret_id_file):
        raise _bad("AppRole needs both --bao-role-id and --bao-secret-id-file")
    if not approle and not c.bao_token_file:
        raise _bad("no OpenBao credentials: give AppRole (--bao-role-id, --bao-secret-id-file)")
    if c.bao_token_file and not approle and not c.dev_mode:
        raise _bad("an OpenBao token is accepted only in dev mode (--dev-tls or --insecure-dev); use AppRole")
    if c.nonce_ttl <= 0 or c.clock_skew <= 0 or c.workers <= 0 or c.max_message_bytes < 4096:
        raise _bad("nonce_ttl, clock_skew, workers must be positive and max_message_bytes >= 4096")
    if c.failover_budget <= 0:
        raise _bad("failover_budget must be positive (seconds)")
    if not 1 <= c.processes <= 64:
        raise _bad("processes must be 1-64")
    if not c.replica and not c.oidc_issuer:
        raise _bad(
            "operator sign-in is required: set --oidc-issuer https://KEYCLOAK/realms/REALM "
            "(and --oidc-jwks-file on air-gapped sites); see docs/keycloak.md"
        )
    if c.node_cert_ttl <= 0 or c.two_person_ttl <= 0:
        raise _bad("node_cert_ttl and two_person_ttl must be positive")
    if not c.node_ca:
        raise _bad("node_ca (the node client CA directory) is required")


def two_person_actions(c: ServerConfig) -> frozenset[str]:
    return frozenset(a.strip() for a in c.two_person_actions.split(",") if a.strip())


def to_args(config: ServerConfig) -> list[str]:
    """Command-line flags that reproduce ``config`` (for starting replicas)."""
    out: list[str] = []
    for option in OPTIONS:
        value = getattr(config, option.name)
        if value == option.default:
            continue
        if option.type is bool:
            out.append(option.flag)
        else:
            out += [option.flag, str(value)]
    return out
