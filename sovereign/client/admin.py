"""``AdminClient``: the control plane's Admin service from the operator's side.

Plain values in, ``sovereign.client.records`` out; a refused call raises ``OperatorError`` with the
server's code. Changes that the two-person rule holds come back with ``pending_change`` set instead of
their result; ``approve`` applies one (by another operator), ``reject`` drops it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from proto.rpc_failure import Endpoint
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc
from sovereign.client.channel import Metadata
from sovereign.client.errors import OPERATOR_PORT, OperatorError
from sovereign.client.records import (
    ApprovedChange,
    ChangePage,
    ChangeState,
    CollateralImport,
    KekChange,
    KeyChange,
    KeyKind,
    KeyPage,
    KeyState,
    LineageExceptionChange,
    LineageExceptionWithdrawal,
    Node,
    NodeChange,
    NodePage,
    NodeState,
    PendingChange,
    Policy,
    PolicyPut,
)
from sovereign.client.wire import WIRE_PREFIX, from_message, wire_name

T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0


class AdminClient:
    """Admin calls over ``channel`` (TLS to the operator port), each with ``metadata`` (the bearer token
    unless the channel's credentials carry it) and ``timeout`` seconds."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        metadata: Metadata = (),
        timeout: float = DEFAULT_TIMEOUT,
        target: str = "",
    ) -> None:
        self._endpoint = Endpoint(target, "Admin", OPERATOR_PORT)
        self._stub = admin_pb2_grpc.AdminStub(channel)
        self._metadata = tuple(metadata)
        self._timeout = timeout

    def _call(self, method: Callable[..., Any], request: Message, reply: type[T]) -> T:
        try:
            out = method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise OperatorError.from_rpc(err, self._endpoint) from None
        return from_message(reply, out)

    # -- nodes

    def list_nodes(
        self, states: Sequence[NodeState] = (), page_size: int = 0, page_token: str = ""
    ) -> NodePage:
        names = [WIRE_PREFIX[NodeState] + s.value for s in states]
        request = admin_pb2.ListNodesRequest(states=names, page_size=page_size, page_token=page_token)
        return self._call(self._stub.ListNodes, request, NodePage)

    def get_node(self, node_id: str) -> Node:
        return self._call(self._stub.GetNode, admin_pb2.GetNodeRequest(node_id=node_id), Node)

    def approve_node(self, node_id: str, groups: Sequence[str], comment: str = "") -> NodeChange:
        request = admin_pb2.ApproveNodeRequest(node_id=node_id, groups=list(groups), comment=comment)
        return self._call(self._stub.ApproveNode, request, NodeChange)

    def revoke_node(self, node_id: str, reason: str) -> NodeChange:
        request = admin_pb2.RevokeNodeRequest(node_id=node_id, reason=reason)
        return self._call(self._stub.RevokeNode, request, NodeChange)

    def suspend_node(self, node_id: str, reason: str) -> NodeChange:
        request = admin_pb2.SuspendNodeRequest(node_id=node_id, reason=reason)
        return self._call(self._stub.SuspendNode, request, NodeChange)

    # -- keys

    def list_keys(
        self,
        kind: KeyKind | None = None,
        state: KeyState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> KeyPage:
        request = admin_pb2.ListKeysRequest(
            kind=wire_name(kind),
            state=wire_name(state),
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self._stub.ListKeys, request, KeyPage)

    def create_key(self, name: str, kind: KeyKind) -> KeyChange:
        request = admin_pb2.CreateKeyRequest(name=name, kind=wire_name(kind))
        return self._call(self._stub.CreateKey, request, KeyChange)

    def rotate_key(self, name: str) -> KeyChange:
        return self._call(self._stub.RotateKey, admin_pb2.RotateKeyRequest(name=name), KeyChange)

    def disable_key(self, name: str, reason: str) -> KeyChange:
        request = admin_pb2.DisableKeyRequest(name=name, reason=reason)
        return self._call(self._stub.DisableKey, request, KeyChange)

    def enable_key(self, name: str, comment: str = "") -> KeyChange:
        request = admin_pb2.EnableKeyRequest(name=name, comment=comment)
        return self._call(self._stub.EnableKey, request, KeyChange)

    def destroy_key(self, name: str, confirm_name: str, reason: str) -> KeyChange:
        request = admin_pb2.DestroyKeyRequest(name=name, confirm_name=confirm_name, reason=reason)
        return self._call(self._stub.DestroyKey, request, KeyChange)

    def rotate_kek(self, comment: str = "") -> KekChange:
        return self._call(self._stub.RotateKek, admin_pb2.RotateKekRequest(comment=comment), KekChange)

    # -- policy

    def get_policy(self) -> Policy:
        return self._call(self._stub.GetPolicy, admin_pb2.GetPolicyRequest(), Policy)

    def put_policy(self, toml: str, expected_version: int, *, dry_run: bool = False) -> PolicyPut:
        request = admin_pb2.PutPolicyRequest(toml=toml, expected_version=expected_version, dry_run=dry_run)
        return self._call(self._stub.PutPolicy, request, PolicyPut)

    def grant_lineage_exception(self, key_name: str, group: str, reason: str) -> LineageExceptionChange:
        """Let ``group`` read the model key ``key_name`` despite a lineage-restricted rule; always held
        for a second operator (``approve``)."""
        request = admin_pb2.GrantLineageExceptionRequest(key_name=key_name, group=group, reason=reason)
        return self._call(self._stub.GrantLineageException, request, LineageExceptionChange)

    def withdraw_lineage_exception(
        self, key_name: str, group: str, reason: str
    ) -> LineageExceptionWithdrawal:
        """Refuse ``group`` the model key ``key_name`` again (the exception must be in force); it only
        tightens, so one operator suffices unless the two-person settings hold it."""
        request = admin_pb2.WithdrawLineageExceptionRequest(key_name=key_name, group=group, reason=reason)
        return self._call(self._stub.WithdrawLineageException, request, LineageExceptionWithdrawal)

    # -- the two-person rule

    def list_pending(
        self, state: ChangeState | None = None, page_size: int = 0, page_token: str = ""
    ) -> ChangePage:
        request = admin_pb2.ListPendingChangesRequest(
            state=wire_name(state),
            page_size=page_size,
            page_token=page_token,
        )
        return self._call(self._stub.ListPendingChanges, request, ChangePage)

    def approve(self, change_id: str, comment: str = "") -> ApprovedChange:
        request = admin_pb2.ApprovePendingChangeRequest(change_id=change_id, comment=comment)
        return self._call(self._stub.ApprovePendingChange, request, ApprovedChange)

    def reject(self, change_id: str, comment: str) -> PendingChange:
        request = admin_pb2.RejectPendingChangeRequest(change_id=change_id, comment=comment)
        return self._call(self._stub.RejectPendingChange, request, PendingChange)

    # -- collateral

    def import_collateral(self, bundle: bytes) -> CollateralImport:
        request = admin_pb2.ImportCollateralRequest(bundle=bundle)
        return self._call(self._stub.ImportCollateral, request, CollateralImport)
