"""Traffic from callers who never authenticated, against the real server, OpenBao and the dev realm:
it adds no ledger entry (and so never one naming a node), it is counted by reason in the metrics and
logged once per reason, not per call; a peer over its budget is refused RESOURCE_EXHAUSTED; the
operator port serves no reflection.

Bound stated by the junk test: 1,100 anonymous Register/Renew/ListNodes calls add 0 ledger entries.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from e2e.node_client import NodeClient, keys_message
from e2e.operators import StandinRealm
from e2e.scrape import refusals
from e2e.world import SNP_MEASUREMENT, Bao, ServerProcess, prepare
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from attestation.simulate import SimulatedPki
from enclave.identity import NodeIdentity
from enclave.providers.simulated import simulated_snp
from proto.contract import parse_error_detail
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, attestation_pb2, attestation_pb2_grpc, common_pb2

SC = grpc.StatusCode
ROUNDS = 100  # of every kind of junk below: 1,100 calls
LOG_LINE = "refused before authentication on the"
LOGGED = re.compile(LOG_LINE + r" (\w+) endpoint: (\w+) \(")


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPki, bao: Bao, realm: StandinRealm
) -> Iterator[ServerProcess]:
    """A second server on the same OpenBao with a tiny per-peer budget: 5 calls, then 1 per second."""
    workdir = tmp_path_factory.mktemp("e2e-limited")
    proc = ServerProcess(
        workdir, prepare(workdir, pki, datetime.now(UTC)), bao, realm, node_rate_limit=1.0,
        extra=["--node-rate-burst", "5"],
    )  # fmt: skip
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def entries_after(server: ServerProcess, seq: int) -> list[dict[str, object]]:
    with sqlite3.connect(server.db) as db:
        rows = db.execute("SELECT canonical FROM audit_entries WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def head(server: ServerProcess) -> int:
    with sqlite3.connect(server.db) as db:
        return int(db.execute("SELECT coalesce(max(seq), -1) FROM audit_entries").fetchone()[0])


def junk_evidence() -> attestation_pb2.Evidence:
    return attestation_pb2.Evidence(tee=common_pb2.TEE_SNP, report=secrets.token_bytes(1184))


def reason_of(err: grpc.RpcError) -> str:
    detail = parse_error_detail(err.trailing_metadata())
    return detail.reason if detail else ""


def outcome(call: Callable[[], attestation_pb2.AttestationResult]) -> str:
    """The reason code of a refused call: the first reason of a REJECTED reply or the RPC's ErrorDetail."""
    try:
        result = call()
    except grpc.RpcError as err:
        return reason_of(err)
    assert result.state == common_pb2.NODE_STATE_REJECTED, result
    assert result.audit_sequence == 0, "a refusal before authentication has no ledger entry"
    return result.reasons[0].code


def test_anonymous_junk_adds_no_ledger_entry_and_is_counted(server: ServerProcess, pki: SimulatedPki) -> None:
    victim = NodeClient(server.channel(), simulated_snp(pki, measurement=SNP_MEASUREMENT), name="junk-victim")
    assert victim.register().state == common_pb2.NODE_STATE_ATTESTED
    victim_actor = f"node:{victim.node_id}"
    start = head(server)
    counted_before = refusals(server)
    log_lines_before = sum(LOG_LINE in line for line in server.output)

    attacker = NodeIdentity.generate()
    node = attestation_pb2_grpc.AttestationStub(server.channel())
    raw_register = server.channel().unary_unary(
        "/sovereign.v1.Attestation/Register",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    no_token = admin_pb2_grpc.AdminStub(server.operator_channel(None))
    bad_token = admin_pb2_grpc.AdminStub(server.operator_channel("junk.token.value"))

    def challenge(name: str) -> bytes:
        return bytes(node.Challenge(attestation_pb2.ChallengeRequest(node_name=name)).nonce)

    def register_unknown_nonce() -> attestation_pb2.AttestationResult:
        return node.Register(
            attestation_pb2.RegisterRequest(
                nonce=secrets.token_bytes(32), evidence=junk_evidence(), keys=keys_message(attacker),
                node_name="junk-node",
            )
        )  # fmt: skip

    def register_junk_evidence() -> attestation_pb2.AttestationResult:
        return node.Register(
            attestation_pb2.RegisterRequest(
                nonce=challenge("junk-node"), evidence=junk_evidence(), keys=keys_message(attacker),
                node_name="junk-node",
            )
        )  # fmt: skip

    def register_malformed() -> attestation_pb2.AttestationResult:
        request = attestation_pb2.RegisterRequest(nonce=b"short", node_name="junk-node")
        return node.Register(request)

    def register_bad_tls_key() -> attestation_pb2.AttestationResult:
        nonce = challenge("junk-node")
        tls_key = attestation_pb2.ClientTlsKey(public_key=b"\x30\x00", signature=bytes(64))
        return node.Register(
            attestation_pb2.RegisterRequest(
                nonce=nonce, evidence=junk_evidence(), keys=keys_message(attacker), node_name="junk-node",
                client_tls_key=tls_key,
            )
        )  # fmt: skip

    def register_undecodable() -> attestation_pb2.AttestationResult:
        return raw_register(b"\xff\xff\xff\xff")  # type: ignore[no-any-return]

    def renew_victim_unknown_nonce() -> attestation_pb2.AttestationResult:
        return node.Renew(
            attestation_pb2.RenewRequest(
                node_id=victim.node_id, nonce=secrets.token_bytes(32), evidence=junk_evidence(),
                keys=keys_message(victim.identity),
            )
        )  # fmt: skip

    def renew_victim_other_keys() -> attestation_pb2.AttestationResult:
        return node.Renew(
            attestation_pb2.RenewRequest(
                node_id=victim.node_id, nonce=challenge(victim.name), evidence=junk_evidence(),
                keys=keys_message(attacker),
            )
        )  # fmt: skip

    def renew_victim_junk_evidence() -> attestation_pb2.AttestationResult:
        # the victim's own public keys and a fresh nonce of its name: only the evidence is missing
        return node.Renew(
            attestation_pb2.RenewRequest(
                node_id=victim.node_id, nonce=challenge(victim.name), evidence=junk_evidence(),
                keys=keys_message(victim.identity),
            )
        )  # fmt: skip

    def renew_unknown_node() -> attestation_pb2.AttestationResult:
        return node.Renew(
            attestation_pb2.RenewRequest(
                node_id="n-" + secrets.token_hex(8), nonce=challenge("junk-node"), evidence=junk_evidence(),
                keys=keys_message(attacker),
            )
        )  # fmt: skip

    def list_nodes_without_token() -> attestation_pb2.AttestationResult:
        return no_token.ListNodes(admin_pb2.ListNodesRequest())  # type: ignore[return-value]

    def list_nodes_bad_token() -> attestation_pb2.AttestationResult:
        return bad_token.ListNodes(admin_pb2.ListNodesRequest())  # type: ignore[return-value]

    kinds: list[tuple[str, Callable[[], attestation_pb2.AttestationResult]]] = [
        ("node", register_unknown_nonce),
        ("node", register_junk_evidence),
        ("node", register_malformed),
        ("node", register_undecodable),
        ("node", register_bad_tls_key),
        ("node", renew_victim_unknown_nonce),
        ("node", renew_victim_other_keys),
        ("node", renew_victim_junk_evidence),
        ("node", renew_unknown_node),
        ("operator", list_nodes_without_token),
        ("operator", list_nodes_bad_token),
    ]
    observed: Counter[tuple[str, str]] = Counter()
    started = time.monotonic()
    for i in range(ROUNDS * len(kinds)):
        endpoint, call = kinds[i % len(kinds)]
        observed[(endpoint, outcome(call))] += 1
    elapsed = time.monotonic() - started

    # the bound: 0 ledger entries, so none naming the victim (or any other node)
    added = entries_after(server, start)
    assert added == [], f"{len(added)} entries from anonymous junk, e.g. {added[:3]}"
    # the refusals are the ones anonymous junk should get, each counted once under its reason
    assert observed[("node", "NONCE_UNKNOWN")] == 200  # unknown nonce on Register and on Renew
    assert observed[("node", "NODE_KEYS_CHANGED")] == 100
    assert observed[("node", "NODE_NOT_FOUND")] == 100
    assert observed[("node", "REQUEST_INVALID")] == 200  # bad shape, undecodable bytes
    assert observed[("node", "NODE_TLS_KEY_INVALID")] == 100
    assert observed[("operator", "AUTH_MISSING_TOKEN")] == 100
    assert observed[("operator", "AUTH_MALFORMED_TOKEN")] == 100
    counted = refusals(server) - counted_before
    assert counted == observed
    assert sum(counted.values()) == ROUNDS * len(kinds) >= 1000
    # logged at most once per reason per minute, not per call (tests/unit: a line per reason and interval)
    lines = [line for line in server.output if LOG_LINE in line][log_lines_before:]
    logged = Counter(LOGGED.search(line).groups() for line in lines)  # type: ignore[union-attr]
    assert set(logged) <= set(observed)
    assert all(n <= 1 + elapsed // 60 for n in logged.values()), logged
    # and the victim is untouched: it renews, and that authenticated renewal is recorded as its own
    assert victim.renew().state == common_pb2.NODE_STATE_ATTESTED
    after = entries_after(server, start)
    assert [(e["kind"], e["actor"]) for e in after] == [("node.renew", victim_actor)]


def test_a_refusal_after_authentication_is_still_recorded(server: ServerProcess, pki: SimulatedPki) -> None:
    """Genuine evidence bound to the nonce and keys, of an image the policy does not admit: the caller
    authenticated, so its refusal is a ledger entry (and names no existing node)."""
    stranger = NodeClient(server.channel(), simulated_snp(pki, measurement=b"\x5a" * 48), name="stranger")
    result = stranger.register()
    assert result.state == common_pb2.NODE_STATE_REJECTED and result.audit_sequence > 0
    (entry,) = entries_after(server, result.audit_sequence - 1)
    assert (entry["kind"], entry["decision"], entry["actor"]) == ("registration", "deny", "node:unregistered")
    assert entry["fields"]["claims_digest"]  # type: ignore[index]


def test_a_peer_over_its_budget_is_refused_resource_exhausted(limited: ServerProcess) -> None:
    node = attestation_pb2_grpc.AttestationStub(limited.channel())
    start = head(limited)
    before = refusals(limited)
    served, refused = 0, []
    started = time.monotonic()
    for _ in range(12):
        try:
            node.Challenge(attestation_pb2.ChallengeRequest(node_name="eager"))
            served += 1
        except grpc.RpcError as err:
            refused.append((err.code(), reason_of(err)))
    elapsed = time.monotonic() - started
    assert 5 <= served <= 5 + int(elapsed * 1.0) + 1  # the burst, plus what refilled meanwhile
    assert refused and set(refused) == {(SC.RESOURCE_EXHAUSTED, "RATE_LIMITED")}
    assert (refusals(limited) - before) == Counter({("node", "RATE_LIMITED"): len(refused)})
    assert entries_after(limited, start) == []


def test_the_operator_port_serves_no_reflection(server: ServerProcess) -> None:
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    for token in (None, server.operators().token("alice")):
        stub = reflection_pb2_grpc.ServerReflectionStub(server.operator_channel(token))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([ask])))
        assert info.value.code() == SC.UNIMPLEMENTED
    node = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    (reply,) = list(node.ServerReflectionInfo(iter([ask])))
    names = {s.name for s in reply.list_services_response.service}
    assert "sovereign.v1.Attestation" in names and "sovereign.v1.Admin" not in names
