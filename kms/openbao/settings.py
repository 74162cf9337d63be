"""OpenBao connection settings: addresses, credentials (a token or an AppRole), TLS, timeouts.

``BaoSettings.resolve`` reads them from explicit arguments or the ``SOVEREIGN_BAO_*`` variables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kms.config import BAO_TOKEN_ENV, OPTION, env_value
from kms.domain.transit import AUDIT_KEY_NAME, KEK_NAME
from kms.errors import Code, OpenBaoError

TRANSIT_MOUNT = "transit"


# --- connection settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenAuth:
    token: str = field(repr=False)


@dataclass(frozen=True)
class AppRoleAuth:
    role_id: str
    secret_id: str = field(repr=False)
    mount: str = "approle"


@dataclass(frozen=True)
class BaoSettings:
    addr: str
    auth: TokenAuth | AppRoleAuth
    kek: str = KEK_NAME
    audit_key: str = AUDIT_KEY_NAME
    mount: str = TRANSIT_MOUNT
    timeout: float = 5.0
    ca_cert: str | None = None
    pool_size: int = 16
    # with several addresses: how long one call may spend finding a new active node
    failover_budget: float = 15.0

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses in ``addr`` (comma-separated for a cluster), in order, without duplicates."""
        out: list[str] = []
        for part in self.addr.split(","):
            addr = part.strip().rstrip("/")
            if not re.fullmatch(r"https?://[^\s/?#@]+", addr):
                raise OpenBaoError(
                    f"OpenBao address {addr[:100]!r} is not http(s)://HOST:PORT",
                    code=Code.KMS_CONFIG_INVALID,
                    hint="list cluster members comma-separated: https://bao-0:8200,https://bao-1:8200",
                )
            if addr not in out:
                out.append(addr)
        return tuple(out)

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        addr: str | None = None,
        token_file: Path | None = None,
        role_id: str | None = None,
        secret_id_file: Path | None = None,
        ca_cert: str | None = None,
        approle: bool = True,
    ) -> BaoSettings:
        """Explicit arguments win over the ``SOVEREIGN_BAO_*`` variables of ``kms.config.OPTIONS`` (the
        ones ``serve`` reads, old names included); AppRole wins over a token.

        ``approle=False`` for operator commands: only a token counts, whatever the environment says.
        """
        env = os.environ if environ is None else environ

        def setting(name: str) -> str | None:
            return env_value(OPTION[name], env) or None

        addr = addr or setting("bao_addr")
        if not addr:
            raise OpenBaoError("no OpenBao address given", code=Code.KMS_CONFIG_INVALID)
        role_id = (role_id or setting("bao_role_id")) if approle else None
        secret_file = (secret_id_file or _path_or_none(setting("bao_secret_id_file"))) if approle else None
        auth: TokenAuth | AppRoleAuth
        if role_id or secret_file:
            if not (role_id and secret_file):
                raise OpenBaoError(
                    "AppRole needs both a role id and a secret id file", code=Code.KMS_CONFIG_INVALID
                )
            auth = AppRoleAuth(role_id=role_id, secret_id=_read_secret(secret_file, "secret id"))
        else:
            tfile = token_file or _path_or_none(setting("bao_token_file"))
            token = _read_secret(tfile, "token") if tfile else env.get(BAO_TOKEN_ENV, "")
            if not token:
                raise OpenBaoError("no OpenBao credentials given", code=Code.KMS_CONFIG_INVALID)
            auth = TokenAuth(token)
        return cls(addr=addr, auth=auth, ca_cert=ca_cert or setting("bao_ca_cert"))


def _path_or_none(text: str | None) -> Path | None:
    return Path(text) if text else None


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise OpenBaoError(
            f"cannot read the {what} file {path}: {exc.strerror}", code=Code.KMS_CONFIG_INVALID
        ) from None
    if not value:
        raise OpenBaoError(f"the {what} file {path} is empty", code=Code.KMS_CONFIG_INVALID)
    return value
