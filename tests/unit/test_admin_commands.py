"""Admin requests <-> typed commands (``kms.server.servicers``): a held change keeps exactly the
deterministic encoding of its request, so changes held before the commands existed still apply."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from kms.domain.catalogue import KeyKind
from kms.errors import Code, KmsError
from kms.server.servicers import REQUESTS, ProtoCommands, command_in
from kms.usecases.admin_commands import COMMANDS, ApproveNode, CreateKey, RotateKek, audit_fields
from proto.sovereign.v1 import admin_pb2, common_pb2

FILLED: list[Message] = [
    admin_pb2.ApproveNodeRequest(node_id="n1", groups=["trainers", "eval"], comment="ok"),
    admin_pb2.RevokeNodeRequest(node_id="n1", reason="stolen"),
    admin_pb2.SuspendNodeRequest(node_id="n1", reason="check"),
    admin_pb2.CreateKeyRequest(name="dataset/train", kind=common_pb2.KEY_KIND_MODEL),
    admin_pb2.RotateKeyRequest(name="dataset/train"),
    admin_pb2.DisableKeyRequest(name="dataset/train", reason="leak"),
    admin_pb2.EnableKeyRequest(name="dataset/train", comment="fixed"),
    admin_pb2.DestroyKeyRequest(name="dataset/train", confirm_name="dataset/train", reason="retired"),
    admin_pb2.RotateKekRequest(comment="yearly"),
    admin_pb2.PutPolicyRequest(toml="schema = 1\n", expected_version=7),
    admin_pb2.GrantLineageExceptionRequest(key_name="model/main", group="inference", reason="ticket 7"),
    admin_pb2.WithdrawLineageExceptionRequest(key_name="model/main", group="inference", reason="ticket 9"),
]


def test_every_holdable_method_has_a_command_and_a_request() -> None:
    assert (
        {c.action for c in COMMANDS}
        == set(REQUESTS)
        == {type(m).DESCRIPTOR.name.removesuffix("Request") for m in FILLED}
    )


@pytest.mark.parametrize("request_msg", FILLED, ids=lambda m: type(m).__name__)
def test_a_held_payload_is_the_requests_deterministic_encoding(request_msg: Message) -> None:
    codec = ProtoCommands()
    command = command_in(request_msg)
    payload = codec.encode(command)
    assert payload == request_msg.SerializeToString(deterministic=True)
    assert codec.decode(command.action, payload) == command


def test_commands_carry_domain_values() -> None:
    assert command_in(FILLED[0]) == ApproveNode("n1", ("trainers", "eval"), "ok")
    assert command_in(FILLED[3]) == CreateKey("dataset/train", KeyKind.MODEL)
    assert audit_fields(command_in(FILLED[0])) == {"node_id": "n1"}
    assert audit_fields(command_in(FILLED[3])) == {"key_name": "dataset/train"}
    assert audit_fields(command_in(FILLED[9])) == {"policy_version": 7}
    assert audit_fields(RotateKek("x")) == {}


def test_a_key_without_a_kind_is_refused_when_decoded() -> None:
    with pytest.raises(KmsError) as info:
        command_in(admin_pb2.CreateKeyRequest(name="dataset/train"))
    assert info.value.code is Code.REQUEST_INVALID
