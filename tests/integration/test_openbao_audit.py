"""The file audit device declared in HCL records every decrypt under the request id unwrap returns."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration


def _entries(kms: Kms) -> list[dict]:  # type: ignore[type-arg]
    assert kms.server.audit_log is not None
    return [json.loads(line) for line in kms.server.audit_log.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("which", ["raft_kms", "kms_dev"])
def test_decrypt_is_in_the_audit_log_under_its_request_id(which: str, request: pytest.FixtureRequest) -> None:
    kms: Kms = request.getfixturevalue(which)
    transit = kms.approle()
    wrapped = transit.generate_wrapped_data_key()
    result = transit.unwrap(wrapped.ciphertext)
    matching = [e for e in _entries(kms) if e.get("request", {}).get("id") == result.request_id]
    assert {e["type"] for e in matching} == {"request", "response"}
    for entry in matching:
        assert entry["request"]["path"] == "transit/decrypt/sovereign-kek"
    # the audit device HMACs secrets: the plaintext is not in the log
    text = kms.server.audit_log.read_text()  # type: ignore[union-attr]
    assert result.plaintext.hex() not in text
    assert base64.b64encode(result.plaintext).decode() not in text
