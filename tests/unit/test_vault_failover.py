"""Which OpenBao failures may be retried on another cluster member: only those that prove the request
did not run, or any transient one for an idempotent call (never a second KEK rotation)."""

from __future__ import annotations

import hvac.exceptions
import pytest
import requests
import urllib3.exceptions

from kms.errors import Code, OpenBaoError
from kms.openbao.failures import map_error
from kms.openbao.vault import BaoSettings, FailoverError, StandbyRedirect, TokenAuth, _mapped

ADDR = "http://127.0.0.1:8200"


def refused() -> requests.exceptions.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


NOT_RUN = [
    refused(),
    StandbyRedirect("HTTP 307 redirect"),
    hvac.exceptions.VaultDown("Vault is sealed"),
    hvac.exceptions.InternalServerError(errors=["local node not active but active cluster node not found"]),
]
AMBIGUOUS = [
    requests.exceptions.ReadTimeout("read timed out"),
    requests.exceptions.ConnectionError("connection reset by peer"),
    hvac.exceptions.InternalServerError(errors=["internal error"]),
]
FINAL = [
    hvac.exceptions.InvalidRequest(errors=["cipher: message authentication failed"]),
    hvac.exceptions.InvalidPath(errors=["no handler"]),
]


@pytest.mark.parametrize("exc", NOT_RUN, ids=lambda e: type(e).__name__)
def test_not_run_failures_are_retried_even_for_rotation(exc: Exception) -> None:
    for idempotent in (True, False):
        assert isinstance(_mapped(exc, "rotate", ADDR, idempotent=idempotent), FailoverError)


@pytest.mark.parametrize("exc", AMBIGUOUS, ids=lambda e: type(e).__name__)
def test_ambiguous_failures_are_retried_only_when_idempotent(exc: Exception) -> None:
    assert isinstance(_mapped(exc, "decrypt", ADDR, idempotent=True), FailoverError)
    error = _mapped(exc, "rotate", ADDR, idempotent=False)
    assert type(error) is OpenBaoError


@pytest.mark.parametrize("exc", FINAL, ids=lambda e: type(e).__name__)
def test_answers_about_the_request_itself_are_final(exc: Exception) -> None:
    assert type(_mapped(exc, "decrypt", ADDR, idempotent=True)) is OpenBaoError


def test_a_redirect_is_unavailable_and_says_to_list_the_members() -> None:
    error = _mapped(StandbyRedirect("HTTP 307"), "decrypt", ADDR, idempotent=True)
    assert error.code is Code.KMS_UNAVAILABLE and "SOVEREIGN_BAO_ADDR" in error.hint


def test_no_active_node_after_an_unseal_is_unavailable_not_a_generic_failure() -> None:
    # the soak saw this answer right after OpenBao restarted and unsealed (KMS_ERROR before)
    error = map_error(NOT_RUN[3], "decrypt", ADDR)
    assert error.code is Code.KMS_UNAVAILABLE and "electing a leader" in (error.hint or "")
    other = map_error(AMBIGUOUS[2], "decrypt", ADDR)
    assert other.code is Code.KMS_ERROR


def test_address_lists_are_parsed_in_order_without_duplicates() -> None:
    settings = BaoSettings(addr=" http://a:1 ,http://b:2/,http://a:1", auth=TokenAuth("t"))
    assert settings.addresses == ("http://a:1", "http://b:2")
    for bad in ("a:1", "http://a:1,", "http://user@a:1", "http://a:1/v1"):
        with pytest.raises(OpenBaoError) as info:
            _ = BaoSettings(addr=bad, auth=TokenAuth("t")).addresses
        assert info.value.code is Code.KMS_CONFIG_INVALID
