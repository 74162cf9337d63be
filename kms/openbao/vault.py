"""OpenBao transit adapter: the only module that talks to OpenBao on the request path.

The rest of the control plane depends on the small ``Transit`` protocol; ``OpenBaoTransit`` implements it
with hvac over one pooled ``requests`` session. Data keys are generated wrapped by the KEK
(``transit/datakey/wrapped``) and only ever leave OpenBao in plaintext through ``unwrap``, whose result
hides the bytes from ``repr``. Every hvac/requests failure is mapped to a coded ``OpenBaoError``.

A raft cluster is given as a comma-separated address list. The adapter sends everything to the active
node (found through ``/v1/sys/health``: 200 active, 429/473 standby, 503 sealed, 501 not initialised)
and never follows an HTTP redirect, so its token only ever goes to a listed address. When a call fails in a
way that shows it was not executed (connection refused, standby without a leader, sealed, a redirect), or
may have been but is safe to repeat (every call but a KEK rotation), it finds the active node again and
retries until ``failover_budget`` seconds are spent; then it fails closed with ``KMS_UNAVAILABLE``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from requests.adapters import HTTPAdapter

from kms.config import BAO_TOKEN_ENV, OPTION, env_value
from kms.domain.transit import (
    AUDIT_KEY_NAME,
    KEK_NAME,
    PROVENANCE_KEY_NAME,
    KeyInfo,
    PublicKey,
    Signature,
    Unwrapped,
    WrappedKey,
)
from kms.errors import Code, OpenBaoError

TRANSIT_MOUNT = "transit"
DATA_KEY_BITS = 256

T = TypeVar("T")


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


class StandbyRedirect(requests.exceptions.RequestException):
    """A node answered with a redirect (a standby that cannot forward); the request was not executed."""


def _refuse_redirects(response: requests.Response, *_args: Any, **_kwargs: Any) -> requests.Response:
    if response.is_redirect:
        raise StandbyRedirect(f"HTTP {response.status_code} redirect", response=response)
    return response


def pooled_client(settings: BaoSettings, token: str | None = None) -> hvac.Client:
    """An hvac client over a keep-alive session that ignores proxy variables (KMS traffic is direct) and
    never follows redirects (a redirect would carry the token to an address nobody configured)."""
    session = requests.Session()
    session.trust_env = False
    # hvac applies its own verify= only to a session it makes itself: without this a site CA is ignored
    session.verify = settings.ca_cert or True
    session.hooks["response"].append(_refuse_redirects)
    addresses = settings.addresses
    adapter = HTTPAdapter(pool_connections=len(addresses), pool_maxsize=settings.pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return hvac.Client(
        url=addresses[0],
        token=token,
        session=session,
        timeout=settings.timeout,
        verify=settings.ca_cert or True,
        allow_redirects=False,
    )


# --- error mapping -------------------------------------------------------------------------------


def map_error(exc: Exception, operation: str, addr: str) -> OpenBaoError:
    """Translate an hvac/requests failure into a coded error. Never quotes request bodies."""
    if isinstance(exc, OpenBaoError):
        return exc
    if isinstance(exc, StandbyRedirect):
        return OpenBaoError(
            f"OpenBao at {addr} is a standby that redirected {operation} instead of forwarding it",
            code=Code.KMS_UNAVAILABLE,
            hint="list every cluster member in SOVEREIGN_BAO_ADDR (comma-separated)",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return OpenBaoError(
            f"OpenBao at {addr} did not answer {operation} in time",
            code=Code.KMS_UNAVAILABLE,
            hint=f"is OpenBao running and healthy at {addr}?",
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return OpenBaoError(
            f"cannot reach OpenBao at {addr} for {operation}: {type(exc).__name__}",
            code=Code.KMS_UNAVAILABLE,
            hint=f"is OpenBao running at {addr}? (SOVEREIGN_BAO_ADDR)",
        )
    if not isinstance(exc, hvac.exceptions.VaultError):
        return OpenBaoError(f"unexpected failure during {operation}: {type(exc).__name__}")
    detail = _detail(exc)
    if isinstance(exc, hvac.exceptions.VaultDown):
        if "sealed" in detail.lower():
            return OpenBaoError(
                f"OpenBao at {addr} is sealed ({operation})",
                code=Code.KMS_SEALED,
                hint=f"unseal OpenBao: BAO_ADDR={addr} bao operator unseal",
            )
        return OpenBaoError(f"OpenBao at {addr} is not serving ({detail})", code=Code.KMS_UNAVAILABLE)
    if isinstance(exc, hvac.exceptions.VaultNotInitialized):
        return OpenBaoError(
            f"OpenBao at {addr} is not initialised",
            code=Code.KMS_UNAVAILABLE,
            hint="initialise and unseal it: bao operator init (see deploy/openbao/README.md)",
        )
    if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        return OpenBaoError(f"OpenBao refused {operation}: {detail}", code=Code.KMS_PERMISSION_DENIED)
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return OpenBaoError(
            f"OpenBao has no such path for {operation}: {detail or 'not found'}",
            code=Code.KMS_NOT_BOOTSTRAPPED,
        )
    if isinstance(exc, hvac.exceptions.InvalidRequest) and operation in {"decrypt", "rewrap"}:
        return OpenBaoError(
            f"OpenBao could not {operation} the wrapped key: {detail}", code=Code.KMS_DECRYPT_FAILED
        )
    return OpenBaoError(f"OpenBao failed {operation}: {type(exc).__name__}: {detail}")


class FailoverError(OpenBaoError):
    """A failure that says nothing about the request itself: another (active) node may serve it."""


def _not_executed(exc: Exception) -> bool:
    """The request certainly did not run on an active node (refused, redirected, standby, sealed)."""
    if isinstance(exc, StandbyRedirect | requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        # requests wraps urllib3's MaxRetryError(reason=NewConnectionError): the connect itself failed
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        return any(c.__name__ == "NewConnectionError" for c in type(reason).__mro__)
    if isinstance(exc, hvac.exceptions.VaultDown | hvac.exceptions.VaultNotInitialized):
        return True
    # a standby while no leader is elected: "local node not active but active cluster node not found"
    return isinstance(exc, hvac.exceptions.InternalServerError) and "node not active" in _detail(exc)


def _transient(exc: Exception) -> bool:
    """The request may have run, but failed in transit or on a failing node: repeat only if idempotent."""
    return isinstance(
        exc,
        requests.exceptions.RequestException
        | hvac.exceptions.InternalServerError
        | hvac.exceptions.BadGateway,
    )


def _detail(exc: hvac.exceptions.VaultError) -> str:
    """OpenBao's error list as one line ("1 error occurred: * x" becomes "x")."""
    raw = "; ".join(str(e) for e in (exc.errors or [])) or str(exc.args[0] if exc.args else "")
    raw = re.sub(r"\d+ errors? occurred:", "", raw)
    return "; ".join(p.strip(" \t*") for p in raw.splitlines() if p.strip(" \t*"))[:300]


def _bad_response(operation: str, what: str) -> OpenBaoError:
    return OpenBaoError(
        f"OpenBao answered {operation} without a valid {what}",
        code=Code.KMS_BAD_RESPONSE,
        hint="check the OpenBao version and that the transit mount is a transit engine",
    )


def _b64(text: Any, operation: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise _bad_response(operation, "base64 value") from None


def _version_of(ciphertext: str, operation: str) -> int:
    # OpenBao's ciphertext form is vault:v<N>:<base64>
    parts = ciphertext.split(":", 2)
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v") or not parts[1][1:].isdigit():
        raise _bad_response(operation, "vault:vN: value")
    return int(parts[1][1:])


# --- the adapter ---------------------------------------------------------------------------------


class OpenBaoTransit:
    """``Transit`` over a real OpenBao. Thread-safe; logs in lazily and refreshes its token."""

    # refresh when less than this fraction of the token's TTL is left
    _REFRESH_FRACTION = 1 / 3

    def __init__(
        self,
        settings: BaoSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        observe: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.observe = observe  # (operation, seconds, succeeded) per call, for metrics
        self.kek = settings.kek
        self.audit_key = settings.audit_key
        self._mount = settings.mount
        self._monotonic = monotonic
        self._addresses = settings.addresses
        self._client = pooled_client(settings)
        self._lock = threading.Lock()
        self._failover_lock = threading.Lock()
        self._generation = 0  # bumped whenever the client moves to another node
        self._located = len(self._addresses) == 1
        self._token_ready = False
        self._deadline: float | None = None  # monotonic time the token expires, None = no expiry
        self._ttl = 0.0
        self._renewable = False
        self._public_keys: dict[int, PublicKey] = {}

    def __repr__(self) -> str:
        return f"OpenBaoTransit(addr={self.settings.addr!r}, kek={self.kek!r}, auth={type(self.settings.auth).__name__})"

    @property
    def active_addr(self) -> str:
        """The address requests go to now (the active node, once found)."""
        return str(self._client.url)

    @property
    def clustered(self) -> bool:
        return len(self._addresses) > 1

    @property
    def client(self) -> hvac.Client:
        """The underlying hvac client (for bootstrap and tests), authenticated."""
        self._ensure_token()
        return self._client

    def close(self) -> None:
        self._client.adapter.close()

    # -- authentication

    def _ensure_token(self) -> None:
        if not self._located:
            self._follow_active(self._generation)
            self._located = True
        if self._token_ready and (self._deadline is None or self._monotonic() < self._refresh_at()):
            return
        with self._lock:
            if not self._token_ready:
                self._authenticate()
            elif self._deadline is not None and self._monotonic() >= self._refresh_at():
                self._refresh()

    def _refresh_at(self) -> float:
        assert self._deadline is not None
        return self._deadline - self._ttl * self._REFRESH_FRACTION

    def _authenticate(self) -> None:
        auth = self.settings.auth
        try:
            if isinstance(auth, AppRoleAuth):
                resp = self._client.auth.approle.login(
                    role_id=auth.role_id, secret_id=auth.secret_id, mount_point=auth.mount
                )
                info = resp["auth"]
                self._set_lease(float(info.get("lease_duration") or 0), bool(info.get("renewable")))
            else:
                self._client.token = auth.token
                data = self._client.auth.token.lookup_self()["data"]
                self._set_lease(float(data.get("ttl") or 0), bool(data.get("renewable")))
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest, hvac.exceptions.Unauthorized):
            self._token_ready = False
            if isinstance(auth, AppRoleAuth):
                raise OpenBaoError(
                    f"AppRole login at {self.settings.addr} refused for role id {auth.role_id}",
                    code=Code.KMS_AUTH_FAILED,
                ) from None
            raise OpenBaoError(
                f"OpenBao at {self.settings.addr} does not accept the token", code=Code.KMS_TOKEN_EXPIRED
            ) from None
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            self._token_ready = False
            raise _mapped(exc, "login", self.active_addr, idempotent=True) from None
        except (KeyError, TypeError, ValueError):
            raise _bad_response("login", "auth block") from None
        self._token_ready = True

    def _set_lease(self, ttl: float, renewable: bool) -> None:
        self._ttl = ttl
        self._renewable = renewable
        self._deadline = self._monotonic() + ttl if ttl > 0 else None

    def _refresh(self) -> None:
        """Renew the token; when renewal is refused or capped by max TTL, log in again (AppRole)."""
        if self._renewable:
            try:
                info = self._client.auth.token.renew_self()["auth"]
                ttl = float(info.get("lease_duration") or 0)
                if ttl > self._ttl * self._REFRESH_FRACTION:
                    self._set_lease(ttl, bool(info.get("renewable")))
                    return
            except (hvac.exceptions.VaultError, KeyError, TypeError):
                pass
            except requests.exceptions.RequestException as exc:
                raise _mapped(exc, "token renewal", self.active_addr, idempotent=True) from None
        if isinstance(self.settings.auth, AppRoleAuth):
            self._authenticate()
            return
        if self._deadline is not None and self._monotonic() >= self._deadline:
            raise OpenBaoError(
                f"the OpenBao token for {self.settings.addr} expired and cannot be renewed",
                code=Code.KMS_TOKEN_EXPIRED,
            )

    def _token_is_dead(self) -> bool:
        try:
            self._client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            return True
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException):
            return False
        return False

    def call(self, operation: str, fn: Callable[[hvac.Client], T], *, idempotent: bool = True) -> T:
        """Run ``fn`` with the authenticated client, mapping failures to coded errors (one re-login on
        a dead AppRole token). On a cluster, a failure that another node may not have (see the module
        docstring) moves to the active node and tries again, within ``failover_budget`` seconds; a call
        that is not ``idempotent`` is repeated only when it certainly did not run. The typed methods
        below use it; operator tools and tests may too."""
        if self.observe is None:
            return self._call(operation, fn, idempotent)
        started = time.monotonic()
        ok = False
        try:
            result = self._call(operation, fn, idempotent)
            ok = True
            return result
        finally:
            self.observe(operation, time.monotonic() - started, ok)

    def healthy(self) -> bool:
        """True when the node requests go to answers ``sys/health`` as active and unsealed (for metrics)."""
        return self._health_status(self.active_addr) == 200

    def _call(self, operation: str, fn: Callable[[hvac.Client], T], idempotent: bool) -> T:
        deadline = time.monotonic() + self.settings.failover_budget
        delay = 0.05
        while True:
            generation = self._generation
            try:
                return self._call_once(operation, fn, idempotent)
            except FailoverError as err:
                if not self.clustered:
                    raise OpenBaoError(err.message, code=err.code, hint=err.hint) from None
                last = err
            if self._follow_active(generation):
                continue
            if time.monotonic() + delay >= deadline:
                raise OpenBaoError(
                    f"no active OpenBao node among {', '.join(self._addresses)} served {operation} within "
                    f"{self.settings.failover_budget:g}s (last: {last.message})",
                    code=Code.KMS_SEALED if last.code is Code.KMS_SEALED else Code.KMS_UNAVAILABLE,
                    hint="check the raft cluster: bao operator raft list-peers; is a quorum up and unsealed?",
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _follow_active(self, generation: int) -> bool:
        """Point the client at the node whose health says active. True if it moved (or another thread
        already moved it since ``generation``), False if no other active node was found."""
        with self._failover_lock:
            if self._generation != generation:
                return True
            for addr in self._addresses:
                if self._health_status(addr) == 200:
                    if addr == self.active_addr:
                        return False
                    self._client.url = addr
                    self._generation += 1
                    return True
            return False

    def _health_status(self, addr: str) -> int:
        try:
            response = self._client.session.get(
                f"{addr}/v1/sys/health",
                timeout=min(self.settings.timeout, 2.0),
                verify=self.settings.ca_cert or True,
                allow_redirects=False,
            )
        except requests.exceptions.RequestException:
            return 0
        return int(response.status_code)

    def _call_once(self, operation: str, fn: Callable[[hvac.Client], T], idempotent: bool) -> T:
        self._ensure_token()
        addr = self.active_addr
        try:
            return fn(self._client)
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            denied = map_error(exc, operation, addr)
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _mapped(exc, operation, addr, idempotent=idempotent) from None
        # A 403 is either the policy or a dead token; only the second is worth a fresh login.
        with self._lock:
            dead = self._token_is_dead()
            if dead and isinstance(self.settings.auth, AppRoleAuth):
                self._authenticate()
        if not dead:
            raise denied
        if not isinstance(self.settings.auth, AppRoleAuth):
            raise OpenBaoError(
                f"the OpenBao token for {self.settings.addr} expired or was revoked ({operation})",
                code=Code.KMS_TOKEN_EXPIRED,
            )
        try:
            return fn(self._client)
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _mapped(exc, operation, addr, idempotent=idempotent) from None

    # -- data keys

    def generate_wrapped_data_key(self, kek: str | None = None) -> WrappedKey:
        name = kek or self.kek
        resp = self.call(
            "datakey",
            lambda c: c.secrets.transit.generate_data_key(
                name, key_type="wrapped", bits=DATA_KEY_BITS, mount_point=self._mount
            ),
        )
        ciphertext = _data(resp, "datakey").get("ciphertext")
        if not isinstance(ciphertext, str):
            raise _bad_response("datakey", "ciphertext")
        return WrappedKey(ciphertext, _version_of(ciphertext, "datakey"))

    def generate_plaintext_data_key(self, kek: str | None = None) -> tuple[bytes, WrappedKey]:
        """A fresh data key, plaintext and wrapped (``transit/datakey/plaintext``): how a data owner, whose
        role may not decrypt (``kms.openbao.data_owner``), seals under a key of its own making."""
        name = kek or self.kek
        resp = self.call(
            "datakey",
            lambda c: c.secrets.transit.generate_data_key(
                name, key_type="plaintext", bits=DATA_KEY_BITS, mount_point=self._mount
            ),
        )
        data = _data(resp, "datakey")
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str):
            raise _bad_response("datakey", "ciphertext")
        return _b64(data.get("plaintext"), "datakey"), WrappedKey(
            ciphertext, _version_of(ciphertext, "datakey")
        )

    def unwrap(self, ciphertext: str, kek: str | None = None) -> Unwrapped:
        name = kek or self.kek
        resp = self.call(
            "decrypt",
            lambda c: c.secrets.transit.decrypt_data(name, ciphertext=ciphertext, mount_point=self._mount),
        )
        return Unwrapped(
            _b64(_data(resp, "decrypt").get("plaintext"), "decrypt"), str(resp.get("request_id", ""))
        )

    def unwrap_batch(
        self, ciphertexts: Sequence[str], kek: str | None = None
    ) -> list[Unwrapped | OpenBaoError]:
        """One request for many ciphertexts; a bad item yields an error in its slot, not a failed batch."""
        if not ciphertexts:
            return []
        name = kek or self.kek
        items = [{"ciphertext": c} for c in ciphertexts]

        def call(c: hvac.Client) -> dict[str, Any]:
            try:
                result: dict[str, Any] = c.secrets.transit.decrypt_data(
                    name, batch_input=items, mount_point=self._mount
                )
                return result
            except hvac.exceptions.InvalidRequest as exc:
                # every item failed: OpenBao answers 400 but still lists per-item errors
                if isinstance(exc.json, dict) and isinstance(exc.json.get("data"), dict):
                    return exc.json
                raise

        resp = self.call("decrypt", call)
        results = _data(resp, "decrypt").get("batch_results")
        if not isinstance(results, list) or len(results) != len(ciphertexts):
            raise _bad_response("decrypt", "batch_results list")
        request_id = str(resp.get("request_id", ""))
        out: list[Unwrapped | OpenBaoError] = []
        for index, item in enumerate(results):
            if isinstance(item, dict) and item.get("error"):
                out.append(
                    OpenBaoError(
                        f"OpenBao could not decrypt batch item {index}: {str(item['error'])[:200]}",
                        code=Code.KMS_DECRYPT_FAILED,
                    )
                )
            elif isinstance(item, dict) and "plaintext" in item:
                out.append(Unwrapped(_b64(item["plaintext"], "decrypt"), request_id))
            else:
                raise _bad_response("decrypt", "batch result")
        return out

    def rewrap(self, ciphertext: str, kek: str | None = None) -> WrappedKey:
        name = kek or self.kek
        resp = self.call(
            "rewrap",
            lambda c: c.secrets.transit.rewrap_data(name, ciphertext=ciphertext, mount_point=self._mount),
        )
        new = _data(resp, "rewrap").get("ciphertext")
        if not isinstance(new, str):
            raise _bad_response("rewrap", "ciphertext")
        return WrappedKey(new, _version_of(new, "rewrap"))

    def rotate_kek(self) -> int:
        """Rotate the KEK (operator credentials); returns its new latest version."""
        self.call(
            "rotate",
            lambda c: c.secrets.transit.rotate_key(self.kek, mount_point=self._mount),
            idempotent=False,  # a repeat after a lost answer would rotate twice
        )
        return self.key_info(self.kek).latest_version

    # -- audit signing key

    def sign(self, data: bytes) -> Signature:
        resp = self.call(
            "sign",
            lambda c: c.secrets.transit.sign_data(
                self.audit_key, hash_input=base64.b64encode(data).decode(), mount_point=self._mount
            ),
        )
        value = _data(resp, "sign").get("signature")
        if not isinstance(value, str):
            raise _bad_response("sign", "signature")
        version = _version_of(value, "sign")
        return Signature(
            value, version, _b64(value.split(":", 2)[2], "sign"), str(resp.get("request_id", ""))
        )

    def verify(self, data: bytes, signature: Signature) -> None:
        """Verify locally with the audit key's public key (the same check an offline verifier does)."""
        public = self.public_key(signature.key_version)
        try:
            Ed25519PublicKey.from_public_bytes(public.raw).verify(signature.raw, data)
        except InvalidSignature:
            raise OpenBaoError(
                f"signature by {self.audit_key} v{signature.key_version} does not verify",
                code=Code.KMS_SIGNATURE_INVALID,
                hint="the data or the signature was altered",
            ) from None

    def public_key(self, version: int | None = None) -> PublicKey:
        if version is not None and version in self._public_keys:
            return self._public_keys[version]
        resp = self.call(
            "read audit key", lambda c: c.secrets.transit.read_key(self.audit_key, mount_point=self._mount)
        )
        data = _data(resp, "read audit key")
        keys = data.get("keys")
        if not isinstance(keys, dict):
            raise _bad_response("read audit key", "keys map")
        for ver, entry in keys.items():
            if isinstance(entry, dict) and entry.get("public_key"):
                raw = _b64(entry["public_key"], "read audit key")
                self._public_keys[int(ver)] = PublicKey(int(ver), raw)
        wanted = version if version is not None else int(data.get("latest_version") or 0)
        if wanted not in self._public_keys:
            raise OpenBaoError(
                f"{self.audit_key} has no public key version {wanted}", code=Code.KMS_SIGNATURE_INVALID
            )
        return self._public_keys[wanted]

    def key_info(self, name: str | None = None) -> KeyInfo:
        key = name or self.kek
        data = _data(
            self.call("read key", lambda c: c.secrets.transit.read_key(key, mount_point=self._mount)),
            "read key",
        )
        try:
            return KeyInfo(
                name=key,
                type=str(data["type"]),
                latest_version=int(data["latest_version"]),
                min_decryption_version=int(data["min_decryption_version"]),
                exportable=bool(data["exportable"]),
                deletion_allowed=bool(data["deletion_allowed"]),
            )
        except (KeyError, TypeError, ValueError):
            raise _bad_response("read key", "key description") from None

    # -- setup (operator credentials)

    def ensure_keys(self) -> dict[str, bool]:
        """Create the KEK and the audit key if absent; returns {name: created}. Never weakens a key."""
        return {
            self.kek: self._ensure_key(self.kek, "aes256-gcm96"),
            self.audit_key: self._ensure_key(self.audit_key, "ed25519"),
            PROVENANCE_KEY_NAME: self._ensure_key(PROVENANCE_KEY_NAME, "ed25519"),
        }

    def _ensure_key(self, name: str, key_type: str) -> bool:
        transit = self._client.secrets.transit
        created = False
        try:
            info = self.key_info(name)
        except OpenBaoError as err:
            if err.code != Code.KMS_NOT_BOOTSTRAPPED:
                raise
            self.call(
                "create key",
                lambda _c: transit.create_key(
                    name,
                    key_type=key_type,
                    exportable=False,
                    allow_plaintext_backup=False,
                    mount_point=self._mount,
                ),
            )
            info, created = self.key_info(name), True
        if info.type != key_type:
            raise OpenBaoError(
                f"transit key {name} exists with type {info.type}, expected {key_type}",
                code=Code.KMS_CONFIG_INVALID,
                hint="this OpenBao already holds a different key by that name; use a fresh mount",
            )
        if info.exportable:
            raise OpenBaoError(
                f"transit key {name} is exportable; refusing to use it",
                code=Code.KMS_CONFIG_INVALID,
                hint="exportability cannot be revoked in OpenBao; create a new key on a fresh mount",
            )
        if info.deletion_allowed:
            self.call(
                "configure key",
                lambda _c: transit.update_key_configuration(
                    name, deletion_allowed=False, mount_point=self._mount
                ),
            )
        return created


def _mapped(exc: Exception, operation: str, addr: str, *, idempotent: bool) -> OpenBaoError:
    error = map_error(exc, operation, addr)
    if _not_executed(exc) or (idempotent and _transient(exc)):
        return FailoverError(error.message, code=error.code, hint=error.hint)
    return error


def _data(resp: Any, operation: str) -> dict[str, Any]:
    data = resp.get("data") if isinstance(resp, dict) else None
    if not isinstance(data, dict):
        raise _bad_response(operation, "data block")
    return data
