"""The HTTP seam: a tiny client ``Protocol`` (the real one uses urllib; tests inject one that talks to
a loopback server), and ``get_with_retries``: HTTP 429 waits for Retry-After, 5xx and connection errors
back off exponentially, both bounded; 404 and other 4xx fail at once. Sleep and clock are injected."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

from attestation.errors import Code, CollateralError


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class HttpClient(Protocol):
    def get(self, url: str, timeout: float) -> HttpResponse:
        """Any HTTP status is a response; only transport failures raise ``OSError``."""
        ...


@runtime_checkable
class HttpPoster(Protocol):
    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> HttpResponse:
        """As ``get``, with a request body (OCSP requests are POSTed, RFC 6960 A.1)."""
        ...


class UrllibClient:
    """The real client (honours the usual proxy variables of the connected machine)."""

    def get(self, url: str, timeout: float) -> HttpResponse:
        return self._send(url, None, None, timeout)

    def post(self, url: str, body: bytes, content_type: str, timeout: float) -> HttpResponse:
        return self._send(url, body, content_type, timeout)

    def _send(self, url: str, body: bytes | None, content_type: str | None, timeout: float) -> HttpResponse:
        if not url.startswith(("https://", "http://")):
            raise OSError(f"refusing non-HTTP URL {url!r}")
        headers = {"User-Agent": "sovereign-collateral-fetch/1"}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
                return HttpResponse(resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()})
        except urllib.error.HTTPError as err:
            return HttpResponse(err.code, err.read(), {k.lower(): v for k, v in err.headers.items()})
        except urllib.error.URLError as err:
            raise OSError(str(err.reason)) from None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 1.0  # seconds, doubled per retry for 5xx / connection errors
    max_delay: float = 120.0  # cap for any one wait, Retry-After included
    timeout: float = 30.0


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def get_with_retries(
    client: HttpClient,
    url: str,
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    clock: Callable[[], datetime],
    body: bytes | None = None,
    content_type: str = "application/octet-stream",
) -> HttpResponse:
    """GET ``url`` (or POST ``body`` to it, when given) with the retry rules above."""
    last, unreachable = "", False
    for attempt in range(policy.attempts):
        delay = min(policy.base_delay * 2**attempt, policy.max_delay)
        try:
            if body is None:
                response = client.get(url, policy.timeout)
            elif isinstance(client, HttpPoster):
                response = client.post(url, body, content_type, policy.timeout)
            else:
                raise CollateralError(
                    f"{url}: this HTTP client cannot POST", code=Code.COLLATERAL_FETCH_FAILED
                )
        except OSError as exc:
            last, unreachable = f"connection failed ({exc})", True
        else:
            unreachable = False
            if response.status == 200:
                return response
            if response.status == 404:
                raise CollateralError(
                    f"{url}: not found (HTTP 404)",
                    code=Code.COLLATERAL_NOT_FOUND,
                    hint="check the product, chip id, TCB or FMSPC you asked for",
                )
            if response.status == 429:
                wait = retry_after(response.header("Retry-After"), clock())
                delay = min(wait if wait is not None else delay, policy.max_delay)
                last = "rate limited (HTTP 429)"
            elif response.status >= 500:
                last = f"server error (HTTP {response.status})"
            else:
                raise CollateralError(
                    f"{url}: refused with HTTP {response.status}", code=Code.COLLATERAL_FETCH_FAILED
                )
        if attempt + 1 < policy.attempts:
            sleep(delay)
    host = urllib.parse.urlsplit(url).hostname or url
    raise CollateralError(
        f"{url}: {last} after {policy.attempts} attempts",
        code=Code.COLLATERAL_FETCH_FAILED,
        hint=(
            f"this machine cannot reach {host}: check its DNS, proxy (HTTPS_PROXY) and firewall; collateral "
            "fetch runs on the connected side, and the air-gapped site imports the bundle it writes"
            if unreachable
            else "try again later (the service is rate limiting or answering with server errors)"
        ),
    )
