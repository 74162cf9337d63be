"""Connected side: fetch AMD KDS / Intel PCS collateral for ``sovereign collateral fetch``."""

from kms.collateral_fetch.fetcher import Fetcher, ResponseCache
from kms.collateral_fetch.http import HttpClient, HttpResponse, RetryPolicy, UrllibClient, get_with_retries
from kms.collateral_fetch.sources import FetchPlan, Request, SnpTarget, parse_snp_target

__all__ = [
    "FetchPlan",
    "Fetcher",
    "HttpClient",
    "HttpResponse",
    "Request",
    "ResponseCache",
    "RetryPolicy",
    "SnpTarget",
    "UrllibClient",
    "get_with_retries",
    "parse_snp_target",
]
