"""End-to-end fixtures: a real OpenBao dev server and a real ``sovereign serve`` process over TLS on
loopback, fed a simulated PKI's trust profile and collateral, its operators signing in at the Keycloak
stand-in. A component that cannot start fails the test with its output."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e.operators import StandinRealm
from e2e.world import KEYS, LEGACY_KEYS, Bao, ServerProcess, prepare, start_bao
from oidc.provider import StandinError, standin

from attestation.simulate import SimulatedPki
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, common_pb2

KIND = {"dataset": common_pb2.KEY_KIND_DATASET, "model": common_pb2.KEY_KIND_MODEL}


@pytest.fixture(scope="session")
def pki() -> SimulatedPki:
    return SimulatedPki.generate(datetime.now(UTC))


@pytest.fixture(scope="session")
def realm() -> StandinRealm:
    """The Keycloak stand-in's realm (one provider per session); no node/npm fails the test."""
    try:
        return StandinRealm(standin())
    except StandinError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    world = start_bao(tmp_path_factory.mktemp("e2e-bao"))
    yield world
    world.server.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao, realm: StandinRealm
) -> Iterator[ServerProcess]:
    workdir: Path = tmp_path_factory.mktemp("e2e-server")
    inputs = prepare(workdir, pki, datetime.now(UTC))
    proc = ServerProcess(workdir, inputs, bao, realm).start()
    try:
        with proc.admin_channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for name, kind in {**KEYS, **LEGACY_KEYS}.items():
                admin.CreateKey(admin_pb2.CreateKeyRequest(name=name, kind=KIND[kind]))
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, "sovereign serve did not stop cleanly on SIGTERM:\n" + "\n".join(proc.output[-20:])
