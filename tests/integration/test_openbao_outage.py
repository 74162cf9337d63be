"""OpenBao going away, sealed or restarted: coded errors fast, and recovery without a new adapter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kms.errors import Code, OpenBaoError
from sovereign.devtools.openbao_server import OpenBaoServer

if TYPE_CHECKING:
    from tests.integration.conftest import Kms

pytestmark = pytest.mark.integration


def test_stopped_dev_server_gives_kms_unavailable(fresh_dev: Kms) -> None:
    transit = fresh_dev.approle()
    wrapped = transit.generate_wrapped_data_key()
    fresh_dev.server.stop()
    with pytest.raises(OpenBaoError) as info:
        transit.unwrap(wrapped.ciphertext)
    assert info.value.code is Code.KMS_UNAVAILABLE
    assert fresh_dev.server.addr in info.value.message
    assert "running" in info.value.hint and fresh_dev.server.addr in info.value.hint
    # refused at connect (a connection error), not a timeout waiting for an answer
    assert "cannot reach OpenBao" in info.value.message and "did not answer" not in info.value.message


def test_raft_restart_and_unseal_recovers(raft_kms: Kms) -> None:
    transit = raft_kms.approle()
    wrapped = transit.generate_wrapped_data_key()
    plaintext = transit.unwrap(wrapped.ciphertext).plaintext
    raft_kms.server.stop()
    with pytest.raises(OpenBaoError) as info:
        transit.unwrap(wrapped.ciphertext)
    assert info.value.code is Code.KMS_UNAVAILABLE
    raft_kms.server.start()  # same data dir and port; unseals with the stored key
    assert transit.unwrap(wrapped.ciphertext).plaintext == plaintext


def test_sealed_server_gives_kms_sealed_then_recovers(raft_kms: Kms) -> None:
    transit = raft_kms.approle()
    wrapped = transit.generate_wrapped_data_key()
    raft_kms.admin().call("seal", lambda c: c.sys.seal())
    with pytest.raises(OpenBaoError) as info:
        transit.unwrap(wrapped.ciphertext)
    assert info.value.code is Code.KMS_SEALED
    assert "unseal" in info.value.hint
    raft_kms.server.unseal()
    assert len(transit.unwrap(wrapped.ciphertext).plaintext) == 32


def test_port_in_use_is_refused_before_starting(tmp_path: Path, kms_dev: Kms) -> None:
    port = int(kms_dev.server.addr.rsplit(":", 1)[1])  # taken by the session server
    with pytest.raises(OpenBaoError) as info:
        OpenBaoServer.dev(tmp_path, port=port)
    assert info.value.code is Code.KMS_SERVER_START_FAILED
    assert f"cannot use port {port}" in info.value.message


def test_server_that_dies_at_start_fails_with_its_log_tail(tmp_path: Path) -> None:
    server = OpenBaoServer(tmp_path, mode="dev", root_token="t0k3n-for-this-test")
    assert server.audit_log is not None
    server.audit_log.mkdir()  # the audit device cannot open its file: bao refuses to start
    with pytest.raises(OpenBaoError) as info:
        server.start()
    assert info.value.code is Code.KMS_SERVER_START_FAILED
    assert "server log tail" in info.value.message and "audit" in info.value.message
    assert "t0k3n-for-this-test" not in info.value.message
    assert not server.running
