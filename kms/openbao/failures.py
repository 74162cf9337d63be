"""OpenBao failures: hvac/requests exceptions mapped to coded ``OpenBaoError``s, and which failures show a
call was not executed (or may be repeated) so another cluster node may serve it. Never quotes request
bodies."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import hvac
import hvac.exceptions
import requests

from kms.errors import Code, OpenBaoError


class StandbyRedirect(requests.exceptions.RequestException):
    """A node answered with a redirect (a standby that cannot forward); the request was not executed."""


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
    if isinstance(exc, hvac.exceptions.InternalServerError) and "node not active" in detail:
        # right after an unseal or a leader loss, before a leader is elected
        return OpenBaoError(
            f"OpenBao at {addr} has no active node yet ({operation}): {detail}",
            code=Code.KMS_UNAVAILABLE,
            hint="OpenBao is electing a leader; retry in a moment",
        )
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
