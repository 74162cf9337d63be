"""A three-node OpenBao raft cluster: the adapter follows the active node, survives a leader change, and
fails closed (KMS_UNAVAILABLE, never a wrong key) while no leader can be elected."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kms.errors import Code, OpenBaoError
from kms.openbao.bootstrap import BootstrapReport, bootstrap
from kms.openbao.vault import AppRoleAuth, BaoSettings, OpenBaoTransit
from sovereign.devtools.openbao_cluster import OpenBaoCluster, RaftNode

pytestmark = pytest.mark.integration


class Cluster:
    def __init__(self, cluster: OpenBaoCluster, report: BootstrapReport) -> None:
        self.bao = cluster
        self.report = report

    def settings(self, addresses: list[str], budget: float = 15.0) -> BaoSettings:
        secret_id = Path(self.report.secret_id_file).read_text().strip()
        auth = AppRoleAuth(self.report.role_id, secret_id)
        return BaoSettings(addr=",".join(addresses), auth=auth, failover_budget=budget, timeout=3.0)

    def transit(self, budget: float = 15.0) -> OpenBaoTransit:
        return OpenBaoTransit(self.settings(self.bao.addresses, budget))

    def heal(self) -> None:
        """Bring every stopped node back, so the next test starts from three members."""
        for node in self.bao.nodes:
            if not node.running:
                node.start()
        self.bao.wait_for_leader()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("raft3")
    bao = OpenBaoCluster(workdir)
    bao.start()
    try:
        yield Cluster(bao, bootstrap(bao.addr, bao.root_token, workdir / "approle"))
    finally:
        bao.stop()


def test_three_members_one_leader_and_audit_on_each(cluster: Cluster) -> None:
    statuses = sorted(n.health().status for n in cluster.bao.nodes)
    assert statuses == [200, 429, 429]
    for node in cluster.bao.nodes:
        assert (node.workdir / "audit.log").exists(), node  # the shared audit table, a file per member


def test_adapter_finds_the_active_node_even_if_listed_last(cluster: Cluster) -> None:
    leader = cluster.bao.leader()
    order = [n.addr for n in cluster.bao.nodes if n is not leader] + [leader.addr]
    transit = OpenBaoTransit(cluster.settings(order))
    wrapped = transit.generate_wrapped_data_key()
    assert transit.active_addr == leader.addr
    assert len(transit.unwrap(wrapped.ciphertext).plaintext) == 32


def test_a_listed_standby_alone_still_serves_by_forwarding(cluster: Cluster) -> None:
    standby = cluster.bao.standbys()[0]
    transit = OpenBaoTransit(cluster.settings([standby.addr]))
    wrapped = transit.generate_wrapped_data_key()
    assert transit.active_addr == standby.addr
    assert len(transit.unwrap(wrapped.ciphertext).plaintext) == 32


def test_leader_stop_elects_a_new_leader_and_calls_resume(cluster: Cluster) -> None:
    transit = cluster.transit()
    wrapped = transit.generate_wrapped_data_key()
    plaintext = transit.unwrap(wrapped.ciphertext).plaintext
    old = cluster.bao.leader()
    assert transit.active_addr == old.addr
    outcomes: list[bytes | OpenBaoError] = []
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            try:
                outcomes.append(transit.unwrap(wrapped.ciphertext).plaintext)
            except OpenBaoError as err:
                outcomes.append(err)

    workers = [threading.Thread(target=storm) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        old.stop()
        new = cluster.bao.wait_for_leader(not_=old)
        after = len(outcomes)
        assert transit.unwrap(wrapped.ciphertext).plaintext == plaintext  # resumes on the new leader
        assert transit.active_addr == new.addr != old.addr
        assert transit.rewrap(wrapped.ciphertext).kek_version >= 1
    finally:
        stop.set()
        for w in workers:
            w.join()
        cluster.heal()
    assert len(outcomes) > after  # the storm kept going through the change
    errors = [o for o in outcomes if isinstance(o, OpenBaoError)]
    assert all(e.code is Code.KMS_UNAVAILABLE for e in errors), errors[:3]
    assert all(o == plaintext for o in outcomes if isinstance(o, bytes))  # never a wrong key


def test_without_quorum_calls_fail_closed_then_recover(cluster: Cluster) -> None:
    transit = cluster.transit(budget=1.5)
    wrapped = transit.generate_wrapped_data_key()
    plaintext = transit.unwrap(wrapped.ciphertext).plaintext
    down: list[RaftNode] = [cluster.bao.leader(), cluster.bao.standbys()[0]]
    try:
        for node in down:
            node.stop()
        for _ in range(2):  # repeatable: nothing half-done is left behind
            with pytest.raises(OpenBaoError) as info:
                transit.unwrap(wrapped.ciphertext)
            assert info.value.code is Code.KMS_UNAVAILABLE
            assert "no active OpenBao node" in info.value.message
            assert all(a in info.value.message for a in cluster.bao.addresses)
        down[0].start()  # quorum again: two of three
        cluster.bao.wait_for_leader()
        assert transit.unwrap(wrapped.ciphertext).plaintext == plaintext
    finally:
        cluster.heal()


def test_bad_address_list_is_a_config_error(cluster: Cluster) -> None:
    settings = replace(cluster.settings(cluster.bao.addresses), addr="http://127.0.0.1:1,ftp://x")
    with pytest.raises(OpenBaoError) as info:
        OpenBaoTransit(settings)
    assert info.value.code is Code.KMS_CONFIG_INVALID
