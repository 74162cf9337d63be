"""KDS/PCS request planning and Retry-After parsing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from attestation.errors import CollateralError
from kms.collateral_fetch import FetchPlan, parse_snp_target
from kms.collateral_fetch.http import HttpResponse, RetryPolicy, get_with_retries, retry_after


def test_vcek_url_carries_chip_and_tcb_in_kds_order() -> None:
    target = parse_snp_target("Turin:" + "0a" * 8 + ":ucode=9,snp=4,tee=1,bl=2,fmc=3")
    urls = [r.url for r in FetchPlan(snp=[target]).requests("https://kds")]
    assert (
        urls[0] == "https://kds/vcek/v1/Turin/0a0a0a0a0a0a0a0a?fmcSPL=3&blSPL=2&teeSPL=1&snpSPL=4&ucodeSPL=9"
    )
    assert urls[1:] == ["https://kds/vcek/v1/Turin/cert_chain", "https://kds/vcek/v1/Turin/crl"]


@pytest.mark.parametrize(
    "text",
    ["Rome:00:bl=1,tee=1,snp=1,ucode=1", "Genoa:abcd:bl=1,tee=1,snp=1,ucode=1",
     "Genoa:" + "00" * 64 + ":bl=1,tee=1,snp=1", "Genoa:" + "00" * 64 + ":bl=1,tee=1,snp=1,ucode=999"],
)  # fmt: skip
def test_bad_snp_targets_are_refused(text: str) -> None:
    with pytest.raises(CollateralError):
        parse_snp_target(text)


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after("12", now) == 12.0
    assert retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


class _Unreachable:
    def get(self, url: str, timeout: float) -> HttpResponse:
        raise OSError("[Errno -2] Name or service not known")


class _RateLimited:
    def get(self, url: str, timeout: float) -> HttpResponse:
        return HttpResponse(429, b"", {})


def test_a_host_that_cannot_be_reached_is_not_called_rate_limited() -> None:
    def fetch(client: _Unreachable | _RateLimited) -> CollateralError:
        with pytest.raises(CollateralError) as err:
            get_with_retries(client, "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain",
                             policy=RetryPolicy(attempts=2), sleep=lambda _: None,
                             clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
        return err.value

    unreachable = fetch(_Unreachable())
    assert "cannot reach kdsintf.amd.com" in unreachable.hint and "rate limit" not in unreachable.hint
    assert "rate limiting" in fetch(_RateLimited()).hint
