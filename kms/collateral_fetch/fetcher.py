"""Fetch a plan's collateral through an injected HTTP client, with an on-disk response cache, and turn
the responses into collateral items (bodies and Intel issuer-chain headers)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

from attestation.collateral import CollateralItem, classify
from attestation.errors import AttestationError, Code, CollateralError
from kms.collateral_fetch.http import HttpClient, HttpResponse, RetryPolicy, get_with_retries
from kms.collateral_fetch.sources import AMD_KDS, INTEL_CERTS, INTEL_PCS, FetchPlan, Request


class ResponseCache:
    """``DIR/<sha256(url)>.body`` and ``.json`` (url, fetched_at, headers). Mutable collateral (CRLs,
    TCB info, QE identity) is reused for ``max_age``; certificates for a fixed chip/TCB forever."""

    def __init__(self, root: Path, max_age: timedelta = timedelta(hours=1)) -> None:
        self.root = root
        self.max_age = max_age

    def _paths(self, request: Request) -> tuple[Path, Path]:
        name = request.url.encode()
        if request.body is not None:  # a POST is answered per body (one OCSP request per certificate)
            name += b"\0" + hashlib.sha256(request.body).digest()
        key = hashlib.sha256(name).hexdigest()
        return self.root / f"{key}.body", self.root / f"{key}.json"

    def get(self, request: Request, now: datetime) -> HttpResponse | None:
        body_path, meta_path = self._paths(request)
        try:
            meta = json.loads(meta_path.read_text())
            body = body_path.read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("url") != request.url or meta.get("sha256") != hashlib.sha256(body).hexdigest():
            return None
        fetched = datetime.fromisoformat(meta["fetched_at"])
        if not request.immutable and now - fetched > self.max_age:
            return None
        return HttpResponse(200, body, meta.get("headers", {}))

    def put(self, request: Request, response: HttpResponse, now: datetime) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body_path, meta_path = self._paths(request)
        headers = {k: v for k, v in response.headers.items() if k.endswith("-issuer-chain")}
        meta = {
            "url": request.url,
            "fetched_at": now.isoformat(),
            "sha256": hashlib.sha256(response.body).hexdigest(),
            "headers": headers,
        }
        for path, data in ((body_path, response.body), (meta_path, json.dumps(meta).encode())):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)


class Fetcher:
    def __init__(
        self,
        client: HttpClient,
        *,
        cache: Path | None = None,
        amd_base: str | None = None,
        intel_base: str | None = None,
        intel_certs_base: str | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.cache = ResponseCache(cache) if cache is not None else None
        self.amd = (amd_base or AMD_KDS).rstrip("/")
        self.intel = (intel_base or INTEL_PCS).rstrip("/")
        self.intel_certs = (intel_certs_base or intel_base or INTEL_CERTS).rstrip("/")
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.clock = clock

    def response(self, request: Request) -> HttpResponse:
        now = self.clock()
        cached = self.cache.get(request, now) if self.cache else None
        if cached is not None:
            return cached
        response = get_with_retries(
            self.client, request.url, policy=self.policy, sleep=self.sleep, clock=self.clock,
            body=request.body, content_type=request.content_type,
        )  # fmt: skip
        if self.cache:
            self.cache.put(request, response, now)
        return response

    def fetch(self, plan: FetchPlan) -> list[tuple[CollateralItem, str]]:
        """Every item the plan names, as (item, source URL); raises ``CollateralError`` on any failure."""
        items: list[tuple[CollateralItem, str]] = []
        for request in plan.requests(self.amd, self.intel, self.intel_certs):
            response = self.response(request)
            items += [(i, request.url) for i in _classify(response.body, request.url)]
            if request.issuer_chain_header:
                chain = response.header(request.issuer_chain_header)
                if not chain:
                    raise CollateralError(
                        f"{request.url}: no {request.issuer_chain_header} header",
                        code=Code.COLLATERAL_FETCH_FAILED,
                        hint="Intel PCS sends the signing chain in this header; check the service URL",
                    )
                items += [(i, request.url) for i in _classify(unquote(chain).encode(), request.url)]
        return items


def _classify(data: bytes, url: str) -> list[CollateralItem]:
    try:
        return classify(data, url)
    except AttestationError as exc:
        raise CollateralError(
            f"{url}: {exc.message}", code=Code.COLLATERAL_FETCH_FAILED, hint=exc.hint
        ) from None
