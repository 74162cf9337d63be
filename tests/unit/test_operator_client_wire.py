"""The operator client's records against the wire: every reply read into a record renders exactly as
protobuf's JSON mapping renders the reply (what the CLI printed before it had a client), unknown enum
values are refused, and a failed call becomes one ``OperatorError`` with the trailer's code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from kms.server.errors import details
from proto.contract import TRAILER
from proto.sovereign.v1 import admin_pb2, attestation_pb2, audit_pb2, common_pb2
from sovereign.client import OperatorError, to_json
from sovereign.client import records as r
from sovereign.client.wire import from_message, wire_name


def stamp(year: int, micro: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime(year, 5, 6, 7, 8, 9, micro, tzinfo=UTC))
    return out


REASON = common_pb2.Reason(code="POLICY_MEASUREMENT", message="not allowed", hint="add it")
NODE = admin_pb2.Node(
    node_id="n1", node_name="gpu-1", state=common_pb2.NODE_STATE_ATTESTED,
    keys=attestation_pb2.NodeKeys(
        kem_suite=attestation_pb2.KemSuite(kem_id=32, kdf_id=1, aead_id=3),
        kem_public_key=b"\x01" * 32, signing_public_key=b"\x02" * 32,
    ),
    claims=attestation_pb2.ClaimsSummary(
        tee=common_pb2.TEE_TDX, product="tdx", evidence_version=4, measurement=b"\x03" * 48,
        host_data=b"\x04", debug=True, tcb_status="UpToDate", platform_id=b"\x05",
        rtmrs=[b"\x06" * 48, b""], simulated=True,
    ),
    groups=["trainers", "eval"], requested_groups=["trainers"],
    lease=common_pb2.Lease(lease_id="l1", issued_at=stamp(2026, 0), expires_at=stamp(2026, 500_000)),
    reasons=[REASON, common_pb2.Reason(code="X")], policy_version=12345678901,
    registered_at=stamp(2025, 123_456), attested_at=stamp(2026, 1000), state_changed_at=stamp(1999, 7),
)  # fmt: skip
KEY = admin_pb2.Key(
    name="dataset/train", kind=common_pb2.KEY_KIND_MODEL, state=admin_pb2.KEY_STATE_DESTROYED,
    latest_version=2,
    versions=[admin_pb2.KeyVersion(version=1, created_at=stamp(2026, 0), kek_version=3),
              admin_pb2.KeyVersion(version=2)],
    created_at=stamp(2026, 0), updated_at=stamp(2026, 999_999),
)  # fmt: skip
HELD = any_pb2.Any()
HELD.Pack(admin_pb2.DestroyKeyRequest(name="k", confirm_name="k", reason="retired"))
CHANGE = admin_pb2.PendingChange(
    change_id="c1", method="DestroyKey", request=HELD, summary="destroy key k",
    proposed_by="alice <sub-a>", proposed_at=stamp(2026, 0), expires_at=stamp(2026, 1),
    state=admin_pb2.PENDING_CHANGE_STATE_APPLIED, decided_by="bob <sub-b>", decided_at=stamp(2026, 2),
    comment="agreed",
)  # fmt: skip
POLICY = admin_pb2.Policy(
    version=2**40, toml="schema = 1\n", sha256=b"\x07" * 32, updated_at=stamp(2026, 3), updated_by="op:a"
)
APPLIED = admin_pb2.PolicyApplied(
    policy=POLICY,
    reappraisal=admin_pb2.Reappraisal(
        nodes_checked=3, suspended=[admin_pb2.SuspendedNode(node_id="n1", node_name="a", reasons=[REASON])]
    ),
    dry_run=True,
)

CASES: list[tuple[type[Any], Message]] = [
    (r.Node, NODE),
    (r.Node, admin_pb2.Node(node_id="bare")),
    (r.NodePage, admin_pb2.ListNodesResponse(nodes=[NODE, admin_pb2.Node()], next_page_token="100")),
    (r.NodeChange, admin_pb2.NodeChangeResponse(node=NODE)),
    (r.NodeChange, admin_pb2.NodeChangeResponse(pending_change=CHANGE)),
    (r.NodeChange, admin_pb2.NodeChangeResponse(node=admin_pb2.Node())),  # set but empty: {}
    (r.Key, KEY),
    (r.KeyPage, admin_pb2.ListKeysResponse(keys=[KEY])),
    (r.KeyChange, admin_pb2.KeyChangeResponse(key=KEY)),
    (r.KekChange, admin_pb2.RotateKekResponse(rotation=admin_pb2.KekRotation(kek_version=4, rewrapped=9))),
    (r.Policy, POLICY),
    (r.PolicyPut, admin_pb2.PutPolicyResponse(applied=APPLIED)),
    (r.PolicyPut, admin_pb2.PutPolicyResponse(pending_change=CHANGE)),
    (r.ChangePage, admin_pb2.ListPendingChangesResponse(changes=[CHANGE, admin_pb2.PendingChange()])),
    (r.ApprovedChange, admin_pb2.ApprovePendingChangeResponse(change=CHANGE, key=KEY)),
    (r.ApprovedChange, admin_pb2.ApprovePendingChangeResponse(change=CHANGE, policy=APPLIED)),
    (
        r.ApprovedChange,
        admin_pb2.ApprovePendingChangeResponse(
            change=CHANGE, lineage_exception=admin_pb2.LineageException(key_name="model/m", group="g")
        ),
    ),
    (r.LineageExceptionChange, admin_pb2.GrantLineageExceptionResponse(pending_change=CHANGE)),
    (r.PendingChange, CHANGE),
    (
        r.CollateralImport,
        admin_pb2.ImportCollateralResponse(
            items=[
                admin_pb2.CollateralItem(kind="vcek", sha256=b"\x08" * 32, not_after=stamp(2027, 0)),
                admin_pb2.CollateralItem(kind="crl", sha256=b"\x09", already_present=True),
            ],
            added=1,
        ),
    ),
    (
        r.AuditPage,
        audit_pb2.ListEntriesResponse(
            entries=[
                audit_pb2.AuditEntry(
                    sequence=2**33,
                    canonical=b'{"a":1}',
                    leaf_hash=b"\x0a" * 32,
                    time=stamp(2026, 4),
                    event="release",
                    decision=audit_pb2.DECISION_DENY,
                    node_id="n1",
                    key_name="k",
                    key_version=1,
                    purpose=common_pb2.PURPOSE_WRITE,
                    request_id=b"\x0b",
                    reasons=[REASON],
                    actor="node:n1",
                )
            ],
            next_page_token="5",
        ),
    ),
]


@pytest.mark.parametrize(("record", "reply"), CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_a_record_renders_as_its_reply_did(record: type[Any], reply: Message) -> None:
    assert to_json(from_message(record, reply)) == MessageToDict(reply, preserving_proto_field_name=True)


def test_records_hold_plain_values() -> None:
    node = from_message(r.Node, NODE)
    assert node.state is r.NodeState.ATTESTED and node.groups == ("trainers", "eval")
    assert node.claims is not None and node.claims.tee is r.Tee.TDX and node.claims.rtmrs[1] == b""
    assert node.lease is not None and node.lease.expires_at == datetime(
        2026, 5, 6, 7, 8, 9, 500_000, tzinfo=UTC
    )
    change = from_message(r.PendingChange, CHANGE)
    assert change.state is r.ChangeState.APPLIED
    assert change.request is not None and change.request["name"] == "k"
    assert from_message(r.Key, KEY).kind is r.KeyKind.MODEL
    assert wire_name(r.KeyState.DISABLED) == "KEY_STATE_DISABLED" and wire_name(None) is None


def test_an_enum_value_the_client_does_not_know_is_out_of_contract() -> None:
    with pytest.raises(OperatorError) as info:
        from_message(r.Node, admin_pb2.Node(node_id="n", state=99))  # type: ignore[arg-type]
    assert info.value.code == "REPLY_INVALID" and "Node.state" in info.value.message


class FailedCall(grpc.RpcError, grpc.Call):
    def __init__(self, status: grpc.StatusCode, text: str, trailer: tuple[tuple[str, bytes], ...]) -> None:
        self._status, self._text, self._trailer = status, text, trailer

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._text

    def trailing_metadata(self) -> Any:
        return self._trailer

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def test_a_refusal_carries_the_servers_code_hint_and_status() -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    text = "AUTH_SAME_APPROVER: 'alice' proposed change c1"
    trailer = ((TRAILER, details(denied, "AUTH_SAME_APPROVER", text, "ask someone else")),)
    err = OperatorError.from_rpc(FailedCall(denied, text, trailer))
    # the status message repeats the code ("CODE: message"); the error says it once
    assert (err.code, err.message, err.hint, err.status) == (
        "AUTH_SAME_APPROVER", "'alice' proposed change c1", "ask someone else", "PERMISSION_DENIED"
    )  # fmt: skip


def test_a_failure_without_a_trailer_is_read_as_a_transport_failure() -> None:
    text = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
    err = OperatorError.from_rpc(FailedCall(grpc.StatusCode.UNAVAILABLE, text, ()))
    assert (err.code, err.status) == ("SERVER_UNREACHABLE", "UNAVAILABLE")
    assert "connection refused" in err.message and "--admin-listen" in err.hint


def test_a_failure_nothing_explains_is_named_by_its_status() -> None:
    err = OperatorError.from_rpc(FailedCall(grpc.StatusCode.DATA_LOSS, "odd", ()))
    assert (err.code, err.status, err.hint) == ("DATA_LOSS", "DATA_LOSS", "")


def test_a_malformed_trailer_is_ignored_not_a_traceback() -> None:
    trailer = ((TRAILER, b"\xff\xff not a status"),)
    err = OperatorError.from_rpc(FailedCall(grpc.StatusCode.INTERNAL, "boom", trailer))
    assert err.code == "INTERNAL"
