"""The OpenBao client session: one pooled ``requests`` session, login (token or AppRole) and token
renewal, and active-node following on a raft cluster.

A raft cluster is given as a comma-separated address list. The session sends everything to the active
node (found through ``/v1/sys/health``: 200 active, 429/473 standby, 503 sealed, 501 not initialised)
and never follows an HTTP redirect, so its token only ever goes to a listed address. When a call fails in a
way that shows it was not executed (connection refused, standby without a leader, sealed, a redirect), or
may have been but is safe to repeat (every call but a KEK rotation), it finds the active node again and
retries until ``failover_budget`` seconds are spent; then it fails closed with ``KMS_UNAVAILABLE``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from requests.adapters import HTTPAdapter

from kms.errors import Code, OpenBaoError
from kms.openbao.failures import FailoverError, StandbyRedirect, _bad_response, _mapped, map_error
from kms.openbao.settings import AppRoleAuth, BaoSettings

T = TypeVar("T")


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


class OpenBaoSession:
    """An authenticated, failover-following hvac client. Thread-safe; logs in lazily and refreshes its
    token. ``call`` is how every OpenBao request is made."""

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

    def __repr__(self) -> str:
        return f"OpenBaoSession(addr={self.settings.addr!r}, auth={type(self.settings.auth).__name__})"

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
