"""``sovereign serve`` configuration: defaults < TOML file < SOVEREIGN_* environment < command line.

Every option is declared once, as a field of ``ServerConfig`` (type, default, help, former names);
``OPTIONS`` is derived from it, and the CLI flags, the environment names and the TOML keys all come
from that table, so ``--help`` documents every option. The OpenBao settings of the operator commands
(``kms.openbao.vault.BaoSettings.resolve``) read the same ``bao_*`` variables from here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from kms.errors import Code, KmsError


def _setting(
    default: Any, help: str, *, renamed_from: tuple[str, ...] = (), old_env: tuple[str, ...] = ()
) -> Any:
    """A ``ServerConfig`` field: its default, its ``--help`` text and the names it had before (still
    read, with a deprecation warning naming the new one): ``renamed_from`` old option names (TOML key
    and flag), ``old_env`` old environment variable names."""
    return field(default=default, metadata={"help": help, "renamed_from": renamed_from, "old_env": old_env})


@dataclass(frozen=True)
class ServerConfig:
    """Every ``sovereign serve`` setting, declared once: ``OPTIONS`` (flags, environment names, TOML
    keys, ``--help``) is derived from these fields."""

    listen: str = _setting(
        "127.0.0.1:8443", "node-facing address HOST:PORT (Attestation, health, reflection)"
    )
    release_listen: str = _setting(
        "127.0.0.1:8444",
        "KeyRelease address HOST:PORT (mutual TLS with the node client certificates of --node-ca-dir)",
    )
    admin_listen: str = _setting(
        "127.0.0.1:8445", "operator address HOST:PORT (Admin, Audit; TLS + bearer token)"
    )
    tls_cert: str = _setting(
        "", "server certificate chain (PEM) for every port; a replaced file is used from the next handshake"
    )
    tls_key: str = _setting("", "server private key (PEM); reloaded like --tls-cert")
    node_ca_dir: str = _setting(
        "var/node-ca",
        "directory of the node client CA (made on first start; key 0600)",
        renamed_from=("node_ca",),
        old_env=("SOVEREIGN_NODE_CA",),
    )
    node_cert_ttl: int = _setting(3600, "node client certificate lifetime, seconds (at most the lease)")
    oidc_issuer: str = _setting(
        "", "Keycloak realm URL https://HOST/realms/REALM whose tokens operators send"
    )
    oidc_audience: str = _setting("sovereign", "client id the operator tokens must be for (aud or azp)")
    oidc_server_url: str = _setting(
        "", "Keycloak base URL to fetch the realm keys from (default: from the issuer)"
    )
    oidc_jwks_file: str = _setting("", "the realm's JWKS saved to a file (air-gapped sites; no fetch)")
    oidc_ca_file: str = _setting("", "CA bundle for Keycloak's TLS certificate")
    role_map: str = _setting(
        "", "role map file (JSON or TOML, see docs/keycloak.md); default: the four roles"
    )
    two_person_actions: str = _setting(
        "PutPolicy,DestroyKey,ApproveNode",
        "comma-separated Admin methods held for a second operator ('' for none)",
    )
    two_person_ttl: int = _setting(86400, "seconds a held change waits for its second operator")
    dev_tls: str = _setting("", "make a dev CA + loopback server certificate in this directory if absent")
    insecure_dev: bool = _setting(False, "serve the node port WITHOUT TLS (development only)")
    db: str = _setting("var/sovereign.db", "SQLite database file (or an SQLAlchemy URL)")
    collateral: str = _setting("var/collateral", "offline collateral store directory")
    collateral_signers: str = _setting(
        "",
        "comma-separated PEM public keys of the collateral bundle signers (NAME.pub.pem); when set, Admin.ImportCollateral accepts only bundles signed by one of them, never unsigned items",
    )
    policy: str = _setting(
        "", "policy TOML; seeds an empty database (later changes: sovereign admin policy put)"
    )
    trust: str = _setting("production", "trust profile: 'production' or a simulation trust JSON file")
    dev_trust: bool = _setting(
        False, "accept a --trust file other than 'production' (simulator roots; development only)"
    )
    dev_clock_file: str = _setting(
        "",
        "development only (needs --dev-trust): add the offset in seconds this file holds to the server's clock, re-read when it changes (soak clock steps)",
    )
    bao_addr: str = _setting("", "OpenBao address, e.g. https://127.0.0.1:8200")
    bao_role_id: str = _setting("", "OpenBao AppRole role id")
    bao_secret_id_file: str = _setting("", "file holding the AppRole secret id")
    bao_token_file: str = _setting("", "file holding an OpenBao token (dev modes only)")
    bao_ca_cert: str = _setting(
        "", "CA bundle to verify OpenBao's TLS certificate", old_env=("SOVEREIGN_BAO_CACERT",)
    )
    failover_budget: float = _setting(
        15.0, "seconds one OpenBao call may spend finding a new active raft member before it fails closed"
    )
    nonce_ttl: int = _setting(60, "challenge nonce lifetime, seconds")
    clock_skew: int = _setting(120, "accepted release timestamp skew, +/- seconds")
    max_message_bytes: int = _setting(256 << 10, "largest request accepted on the node port, bytes")
    workers: int = _setting(16, "threads for Register/Renew (evidence verification)")
    node_rate_limit: float = _setting(
        20.0,
        "calls per second each peer address may make on the node port (Challenge, Register, Renew, health, reflection), refilling its bucket; more are refused RESOURCE_EXHAUSTED/RATE_LIMITED (0: no limit)",
    )
    node_rate_burst: int = _setting(
        200, "calls a peer address may make at once on the node port (its bucket)"
    )
    metrics_port: int = _setting(0, "serve Prometheus /metrics on 127.0.0.1:PORT (0: off)")
    console_listen: str = _setting(
        "", "web console address HOST:PORT (HTTPS with --tls-cert; '' for no console)"
    )
    console_url: str = _setting(
        "", "the console's URL as browsers reach it (default: https://CONSOLE_LISTEN)"
    )
    console_audit_key: str = _setting(
        "", "audit public key (PEM) the console's in-browser proof check pins (default: read from OpenBao)"
    )
    tls_ca: str = _setting(
        "", "CA (PEM) that issued --tls-cert; the console pins it to reach the operator port"
    )
    denial_window_ms: float = _setting(2.0, "how long a denial record waits for others to commit with")
    processes: int = _setting(
        1,
        "node-facing server processes sharing the port (SO_REUSEPORT), all stateless over the same database and OpenBao; only the first serves Admin and metrics",
    )
    replica: bool = _setting(
        False, "internal: run as a replica started by --processes (no Admin, no metrics)"
    )

    @property
    def dev_mode(self) -> bool:
        return self.insecure_dev or bool(self.dev_tls)


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    renamed_from: tuple[str, ...] = ()
    old_env: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def old_flags(self) -> tuple[str, ...]:
        return tuple("--" + old.replace("_", "-") for old in self.renamed_from)


ENV_PREFIX = "SOVEREIGN_"
# A raw OpenBao token in the environment: operator commands only (``BaoSettings.resolve``); ``serve``
# takes a token only from a file, in dev mode.
BAO_TOKEN_ENV = "SOVEREIGN_BAO_TOKEN"  # noqa: S105 (a variable name, not a secret)


def _options() -> tuple[Option, ...]:
    types = get_type_hints(ServerConfig)
    return tuple(
        Option(
            f.name,
            types[f.name],
            f.default,
            f.metadata["help"],
            f.metadata["renamed_from"],
            f.metadata["old_env"],
        )
        for f in dataclasses.fields(ServerConfig)
    )


OPTIONS: tuple[Option, ...] = _options()
OPTION = {o.name: o for o in OPTIONS}
# old option name -> the option it is now
RENAMED = {old: o for o in OPTIONS for old in o.renamed_from}
log = logging.getLogger("sovereign.config")


RETIRED = {
    "release_window_ms": "a release batch no longer waits to gather: it goes at once, and releases arriving "
    "meanwhile go together in the next one",
}
"""Options that no longer do anything: a config file that still sets one starts, with a warning."""


def _retired(file: Path, key: str) -> bool:
    why = RETIRED.get(key.replace("-", "_"))
    if why is not None:
        log.warning("%s: option %r is retired and ignored (%s); remove it", file, key, why)
    return why is not None


def deprecated(old: str, new: str) -> None:
    log.warning("%s is deprecated and will be removed: use %s", old, new)


def env_value(option: Option, env: Mapping[str, str]) -> str | None:
    """``option``'s value in ``env``: its variable, else one of its old names (with a deprecation
    warning naming the new one), else None."""
    if option.env in env:
        for old in option.old_env:
            if old in env and not _other_meaning(option, env[old]):
                log.warning("%s is ignored: %s is set (and replaces it)", old, option.env)
        return env[option.env]
    for old in option.old_env:
        if old in env and not _other_meaning(option, env[old]):
            deprecated(old, option.env)
            return env[old]
    return None


def _other_meaning(option: Option, value: str) -> bool:
    # SOVEREIGN_NODE_CA also names the node agent's CA file to pin; serve read it as the node-CA
    # directory before it became SOVEREIGN_NODE_CA_DIR. A file there is the agent's: not serve's.
    return option.name.endswith("_dir") and Path(value).is_file()


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
        keys = {key.replace("-", "_") for key in doc}
        for key, value in doc.items():
            if _retired(file, key):
                continue
            name = key.replace("-", "_")
            option = OPTION.get(name) or RENAMED.get(name)
            if option is None:
                raise _bad(f"{file}: unknown option {key!r}")
            if option.name != name:
                if option.name in keys:
                    raise _bad(
                        f"{file}: {key!r} is the old name of {option.name!r}; give only {option.name!r}"
                    )
                deprecated(f"{file}: option {key!r}", repr(option.name))
            values[option.name] = _coerce(option, value, str(file))
    env = os.environ if environ is None else environ
    for option in OPTIONS:
        text = env_value(option, env)
        if text is not None:
            values[option.name] = _coerce(option, text, option.env)
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    for name, value in given.items():
        option = OPTION.get(name) or RENAMED[name]
        if option.name != name:
            if option.name in given:
                raise _bad(
                    f"give --{option.name.replace('_', '-')} only (--{name.replace('_', '-')} is its old name)"
                )
            deprecated("--" + name.replace("_", "-"), option.flag)
        values[option.name] = _coerce(option, value, option.flag)
    config = dataclasses.replace(ServerConfig(), **values)
    validate(config)
    return config


def validate(c: ServerConfig) -> None:
    """Every problem of ``c`` at once (one error listing them all), so a start fails once, not once per
    missing prerequisite."""
    problems = _problems(c)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = "; ".join(f"({i}) {p.message}" for i, p in enumerate(problems, start=1))
        hints = dict.fromkeys(p.hint for p in problems if p.hint)
        raise KmsError(
            f"{len(problems)} problems in the configuration: {listed}",
            code=Code.SERVER_CONFIG_INVALID,
            hint="; ".join(hints),
        )


def _problems(c: ServerConfig) -> list[KmsError]:
    problems: list[KmsError] = []
    for name in ("listen", "release_listen", "admin_listen"):
        host, _, port = getattr(c, name).rpartition(":")
        if not host or not port.isdigit():
            problems.append(_bad(f"{name} must be HOST:PORT, got {getattr(c, name)!r}"))
    if c.insecure_dev and (c.dev_tls or c.tls_cert):
        problems.append(_bad("--insecure-dev cannot be combined with TLS options"))
    if c.insecure_dev:
        for name in ("listen", "release_listen", "admin_listen"):
            if not is_loopback(getattr(c, name).rpartition(":")[0]):
                problems.append(
                    KmsError(
                        f"--insecure-dev serves plaintext (operator tokens included), so it listens on loopback "
                        f"only; {name} is {getattr(c, name)!r}",
                        code=Code.SERVER_CONFIG_INVALID,
                        hint="use 127.0.0.1:PORT or [::1]:PORT, or TLS (--tls-cert/--tls-key, or --dev-tls DIR)",
                    )
                )
    if not c.insecure_dev and not c.dev_tls and not (c.tls_cert and c.tls_key):
        problems.append(
            _bad("TLS is required: give --tls-cert and --tls-key (or --dev-tls DIR for development)")
        )
    if c.console_listen:
        host, _, port = c.console_listen.rpartition(":")
        if not host or not port.isdigit():
            problems.append(_bad(f"console_listen must be HOST:PORT, got {c.console_listen!r}"))
        if c.insecure_dev:
            problems.append(
                _bad(
                    "the console needs TLS (its session cookie is Secure): drop --insecure-dev or --console-listen"
                )
            )
        if c.tls_cert and not c.tls_ca:
            problems.append(
                _bad("the console needs --tls-ca (the CA that issued --tls-cert) to reach the operator port")
            )
    if c.trust != "production" and not c.dev_trust:
        problems.append(
            _bad(
                f"--trust {c.trust!r} is not the production trust profile: it pins roots other than AMD's and "
                "Intel's, which only development may do; add --dev-trust, or omit --trust in production"
            )
        )
    if c.dev_clock_file and (c.trust == "production" or not c.dev_trust):
        raise _bad(
            "--dev-clock-file shifts the server's clock: a development control, refused outside the dev "
            "trust profile (--trust FILE --dev-trust)"
        )
    if not c.bao_addr:
        problems.append(_bad("no OpenBao address: set --bao-addr or SOVEREIGN_BAO_ADDR"))
    approle = bool(c.bao_role_id or c.bao_secret_id_file)
    if approle and not (c.bao_role_id and c.bao_secret_id_file):
        problems.append(_bad("AppRole needs both --bao-role-id and --bao-secret-id-file"))
    if not approle and not c.bao_token_file:
        problems.append(_bad("no OpenBao credentials: give AppRole (--bao-role-id, --bao-secret-id-file)"))
    if c.bao_token_file and not approle and not c.dev_mode:
        problems.append(
            _bad("an OpenBao token is accepted only in dev mode (--dev-tls or --insecure-dev); use AppRole")
        )
    if c.nonce_ttl <= 0 or c.clock_skew <= 0 or c.workers <= 0 or c.max_message_bytes < 4096:
        problems.append(_bad("nonce_ttl, clock_skew, workers must be positive and max_message_bytes >= 4096"))
    if not (math.isfinite(c.node_rate_limit) and c.node_rate_limit >= 0) or c.node_rate_burst < 1:
        problems.append(
            _bad("node_rate_limit must be a finite number >= 0 (0: off) and node_rate_burst >= 1")
        )
    if c.failover_budget <= 0:
        problems.append(_bad("failover_budget must be positive (seconds)"))
    if not 1 <= c.processes <= 64:
        problems.append(_bad("processes must be 1-64"))
    if not c.replica and not c.oidc_issuer:
        problems.append(
            _bad(
                "operator sign-in is required: set --oidc-issuer https://KEYCLOAK/realms/REALM "
                "(and --oidc-jwks-file on air-gapped sites); see docs/keycloak.md"
            )
        )
    if c.node_cert_ttl <= 0 or c.two_person_ttl <= 0:
        problems.append(_bad("node_cert_ttl and two_person_ttl must be positive"))
    if not c.node_ca_dir:
        problems.append(_bad("node_ca_dir (the node client CA directory) is required"))
    return problems


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (``127.0.0.0/8``, ``::1``; IPv6 in brackets or not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


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


# --- where the installed configuration is ---------------------------------------------------------

INSTALLED_CONFIG = Path("/etc/sovereign/sovereign.toml")
CONFIG_ENV = "SOVEREIGN_CONFIG"


def config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The configuration this host runs with: ``$SOVEREIGN_CONFIG`` (which must exist), else the
    installed ``/etc/sovereign/sovereign.toml`` when present, else None (a development tree)."""
    env = os.environ if environ is None else environ
    named = env.get("SOVEREIGN_CONFIG")
    if named:
        if not Path(named).is_file():
            raise KmsError(
                f"{CONFIG_ENV} names {named}, which is not a file",
                code=Code.SERVER_CONFIG_INVALID,
                hint=f"point {CONFIG_ENV} at the installed sovereign.toml, or unset it",
            )
        return Path(named)
    return INSTALLED_CONFIG if INSTALLED_CONFIG.is_file() else None


def read_settings(file: Path) -> dict[str, Any]:
    """The options ``file`` sets (checked and typed as ``load_config`` does, old names mapped to the
    new), without requiring what only ``serve`` needs: what the operator commands take their database,
    collateral store and endpoints from."""
    try:
        doc = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(f"cannot read config {file}: {type(exc).__name__}: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if _retired(file, key):
            continue
        option = OPTION.get(key.replace("-", "_")) or RENAMED.get(key.replace("-", "_"))
        if option is None:
            raise _bad(f"{file}: unknown option {key!r}")
        values[option.name] = _coerce(option, value, str(file))
    return values
