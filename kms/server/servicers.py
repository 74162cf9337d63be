"""The Admin servicer (thread-per-request, on the operator endpoint behind ``OperatorAuthInterceptor``):
decode the request, call a use case as the authenticated operator (``current_actor()``), encode the
reply. Coded errors become statuses with an ``ErrorDetail`` trailer; anything unexpected is logged and
answered INTERNAL.

Changes go through ``kms.usecases.pending.PendingChanges`` (the two-person rule: applied now, or held for a
second operator); a held change keeps its request exactly as the deterministic protobuf encoding of
the command (``ProtoCommands``), bound by a digest, so rows written by earlier versions still apply.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from attestation.errors import AttestationError
from kms.clock import Clock
from kms.domain.catalogue import KeyRecord
from kms.domain.registry import NodeRecord, reasons_from
from kms.errors import KmsError
from kms.oidc.errors import AuthError
from kms.oidc.two_person import ChangeState, OperatorRef, PendingChange, TwoPersonRule
from kms.server import auth_interceptor as interceptor
from kms.server import codec
from kms.server.auth_interceptor import current_actor
from kms.server.errors import INTERNAL, abort
from kms.server.operator_audit import OperatorAudit, actor_fields
from kms.usecases.admin import Admin, PolicyChange
from kms.usecases.admin_commands import (
    COMMANDS,
    AdminActions,
    AdminCommand,
    AdminResult,
    KekRotated,
    LineageException,
    LineageExceptionWithdrawn,
    audit_fields,
)
from kms.usecases.pending import Applied, PendingChanges
from kms.usecases.policy_source import ActivePolicy
from kms.usecases.release import ReleaseDenied
from policies.errors import PolicyError
from proto.sovereign.v1 import (
    admin_pb2,
    admin_pb2_grpc,
)

log = logging.getLogger("sovereign.server")
T = TypeVar("T")


def handle(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except AuthError as err:
        interceptor.abort(context, err)
    except (KmsError, AttestationError, PolicyError, ReleaseDenied) as err:
        abort(context, err)
    except Exception:
        log.exception("unexpected failure")
        abort(context, INTERNAL)


def _policy_out(p: ActivePolicy) -> admin_pb2.Policy:
    return admin_pb2.Policy(
        version=p.version,
        toml=p.row.toml,
        sha256=bytes.fromhex(p.row.sha256),
        updated_at=codec.ts(p.row.updated_at),
        updated_by=p.row.updated_by,
    )


def _policy_applied_out(c: PolicyChange) -> admin_pb2.PolicyApplied:
    return admin_pb2.PolicyApplied(
        policy=_policy_out(c.policy),
        dry_run=c.dry_run,
        reappraisal=admin_pb2.Reappraisal(
            nodes_checked=c.nodes_checked,
            suspended=[
                admin_pb2.SuspendedNode(
                    node_id=ch.node_id, reasons=codec.reasons_out(reasons_from(ch.reasons))
                )
                for ch in c.suspended
            ],
        ),
    )


def result_out(result: AdminResult) -> tuple[str, Any]:
    """(the reply field, its message) for what an applied change produced."""
    if isinstance(result, NodeRecord):
        return "node", codec.node_out(result)
    if isinstance(result, KeyRecord):
        return "key", codec.key_out(result)
    if isinstance(result, LineageException):
        return "lineage_exception", admin_pb2.LineageException(key_name=result.key_name, group=result.group)
    if isinstance(result, LineageExceptionWithdrawn):
        withdrawn = admin_pb2.LineageException(key_name=result.key_name, group=result.group)
        return "lineage_exception_withdrawn", withdrawn
    if isinstance(result, KekRotated):
        return "rotation", admin_pb2.KekRotation(kek_version=result.kek_version, rewrapped=result.rewrapped)
    return "policy", _policy_applied_out(result)


_STATE_OUT = {
    ChangeState.PENDING: admin_pb2.PENDING_CHANGE_STATE_PENDING,
    ChangeState.APPLIED: admin_pb2.PENDING_CHANGE_STATE_APPLIED,
    ChangeState.REJECTED: admin_pb2.PENDING_CHANGE_STATE_REJECTED,
    ChangeState.EXPIRED: admin_pb2.PENDING_CHANGE_STATE_EXPIRED,
}
_STATE_IN = {v: k for k, v in _STATE_OUT.items()}
# The request message of each command (the held payload is its deterministic encoding).
REQUESTS: dict[str, type[Message]] = {
    "ApproveNode": admin_pb2.ApproveNodeRequest,
    "RevokeNode": admin_pb2.RevokeNodeRequest,
    "SuspendNode": admin_pb2.SuspendNodeRequest,
    "CreateKey": admin_pb2.CreateKeyRequest,
    "RotateKey": admin_pb2.RotateKeyRequest,
    "DisableKey": admin_pb2.DisableKeyRequest,
    "EnableKey": admin_pb2.EnableKeyRequest,
    "DestroyKey": admin_pb2.DestroyKeyRequest,
    "RotateKek": admin_pb2.RotateKekRequest,
    "PutPolicy": admin_pb2.PutPolicyRequest,
    "GrantLineageException": admin_pb2.GrantLineageExceptionRequest,
    "WithdrawLineageException": admin_pb2.WithdrawLineageExceptionRequest,
}
_COMMAND = {c.action: c for c in COMMANDS}


def command_in(request: Message) -> AdminCommand:
    """The command of an Admin change request (the fields are named alike on both sides)."""
    name = request.DESCRIPTOR.name.removesuffix("Request")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(_COMMAND[name]):
        value = getattr(request, f.name)
        if f.name == "kind":
            value = codec.KIND_IN.get(value)
            if value is None:
                raise codec.invalid("kind must be KEY_KIND_DATASET or KEY_KIND_MODEL")
        elif f.name == "groups":
            value = tuple(value)
        values[f.name] = value
    return _COMMAND[name](**values)


def command_out(command: AdminCommand) -> Message:
    values = {f.name: getattr(command, f.name) for f in dataclasses.fields(command)}
    if "kind" in values:
        values["kind"] = codec.KIND_OUT[values["kind"]]
    return REQUESTS[command.action](**values)


class ProtoCommands:
    """``kms.usecases.pending.CommandCodec``: a held command as its request's deterministic protobuf bytes."""

    def encode(self, command: AdminCommand) -> bytes:
        return command_out(command).SerializeToString(deterministic=True)

    def decode(self, action: str, payload: bytes) -> AdminCommand:
        return command_in(REQUESTS[action].FromString(payload))


def who(ref: OperatorRef) -> str:
    return f"{ref.username} <{ref.subject}>"


def pending_out(change: PendingChange) -> admin_pb2.PendingChange:
    packed = any_pb2.Any()
    packed.Pack(REQUESTS[change.action].FromString(change.payload))
    out = admin_pb2.PendingChange(
        change_id=change.change_id,
        method=change.action,
        request=packed,
        summary=change.summary,
        proposed_by=who(change.proposed_by),
        proposed_at=codec.ts(change.proposed_at),
        expires_at=codec.ts(change.expires_at),
        state=_STATE_OUT[change.state],
        comment=change.comment,
    )
    if change.decided_by is not None:
        out.decided_by = who(change.decided_by)
    if change.decided_at is not None:
        out.decided_at.CopyFrom(codec.ts(change.decided_at))
    return out


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Every call runs as ``current_actor()`` (set by the interceptor, which already checked the role)."""

    def __init__(self, admin: Admin, rule: TwoPersonRule, audit: OperatorAudit, clock: Clock) -> None:
        self._uc = admin
        self._actions = AdminActions(admin)
        self._pending: PendingChanges[AdminCommand, AdminResult] = PendingChanges(
            rule, self._actions, ProtoCommands(), audit, clock
        )

    def _change(self, request: Message, reply: type[Message], field: str) -> Message:
        """Apply the change now (the reply's ``field``) or hold it (its ``pending_change``)."""
        command = command_in(request)
        out = self._pending.submit(command, current_actor(), audit_fields(command))
        if isinstance(out, Applied):
            return reply(**{field: result_out(out.result)[1]})
        return reply(pending_change=pending_out(out.change))

    # -- the two-person rule

    def ListPendingChanges(
        self, request: admin_pb2.ListPendingChangesRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.ListPendingChangesResponse:
            state = _STATE_IN.get(request.state, ChangeState.PENDING)
            changes, token = self._pending.list(state, request.page_size, request.page_token)
            return admin_pb2.ListPendingChangesResponse(
                changes=[pending_out(c) for c in changes], next_page_token=token
            )

        return handle(context, call)

    def ApprovePendingChange(
        self, request: admin_pb2.ApprovePendingChangeRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.ApprovePendingChangeResponse:
            approved = self._pending.approve(request.change_id, current_actor(), request.comment)
            kind, result = result_out(approved.result)
            return admin_pb2.ApprovePendingChangeResponse(
                change=pending_out(approved.change), **{kind: result}
            )

        return handle(context, call)

    def RejectPendingChange(
        self, request: admin_pb2.RejectPendingChangeRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.PendingChange:
            return pending_out(self._pending.reject(request.change_id, current_actor(), request.comment))

        return handle(context, call)

    def ListNodes(self, request: admin_pb2.ListNodesRequest, context: grpc.ServicerContext) -> Any:
        def call() -> admin_pb2.ListNodesResponse:
            states = [codec.NODE_STATE_IN[s] for s in request.states if s in codec.NODE_STATE_IN]
            if request.states and not states:
                return admin_pb2.ListNodesResponse()  # only REJECTED asked for: never recorded
            nodes, token = self._uc.list_nodes(states, request.page_size, request.page_token)
            return admin_pb2.ListNodesResponse(
                nodes=[codec.node_out(n) for n in nodes], next_page_token=token
            )

        return handle(context, call)

    def GetNode(self, request: admin_pb2.GetNodeRequest, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: codec.node_out(self._uc.get_node(request.node_id)))

    def _node_change(self, request: Message, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: self._change(request, admin_pb2.NodeChangeResponse, "node"))

    def ApproveNode(self, request: admin_pb2.ApproveNodeRequest, context: grpc.ServicerContext) -> Any:
        return self._node_change(request, context)

    def RevokeNode(self, request: admin_pb2.RevokeNodeRequest, context: grpc.ServicerContext) -> Any:
        return self._node_change(request, context)

    def SuspendNode(self, request: admin_pb2.SuspendNodeRequest, context: grpc.ServicerContext) -> Any:
        return self._node_change(request, context)

    def _key_change(self, request: Message, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: self._change(request, admin_pb2.KeyChangeResponse, "key"))

    def CreateKey(self, request: admin_pb2.CreateKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change(request, context)

    def RotateKey(self, request: admin_pb2.RotateKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change(request, context)

    def DisableKey(self, request: admin_pb2.DisableKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change(request, context)

    def EnableKey(self, request: admin_pb2.EnableKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change(request, context)

    def DestroyKey(self, request: admin_pb2.DestroyKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change(request, context)

    def ListKeys(self, request: admin_pb2.ListKeysRequest, context: grpc.ServicerContext) -> Any:
        def call() -> admin_pb2.ListKeysResponse:
            keys, token = self._uc.list_keys(
                codec.KIND_IN.get(request.kind),
                codec.KEY_STATE_IN.get(request.state),
                request.page_size,
                request.page_token,
            )
            return admin_pb2.ListKeysResponse(keys=[codec.key_out(k) for k in keys], next_page_token=token)

        return handle(context, call)

    def RotateKek(self, request: admin_pb2.RotateKekRequest, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: self._change(request, admin_pb2.RotateKekResponse, "rotation"))

    def GrantLineageException(
        self, request: admin_pb2.GrantLineageExceptionRequest, context: grpc.ServicerContext
    ) -> Any:
        return handle(
            context,
            lambda: self._change(request, admin_pb2.GrantLineageExceptionResponse, "lineage_exception"),
        )

    def WithdrawLineageException(
        self, request: admin_pb2.WithdrawLineageExceptionRequest, context: grpc.ServicerContext
    ) -> Any:
        return handle(
            context,
            lambda: self._change(request, admin_pb2.WithdrawLineageExceptionResponse, "withdrawn"),
        )

    def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: _policy_out(self._uc.get_policy()))

    def PutPolicy(self, request: admin_pb2.PutPolicyRequest, context: grpc.ServicerContext) -> Any:
        def call() -> Message:
            if request.dry_run:  # changes nothing: never held, not audited as a change
                change = self._actions.apply(command_in(request), current_actor())
                return admin_pb2.PutPolicyResponse(applied=result_out(change)[1])
            return self._change(request, admin_pb2.PutPolicyResponse, "applied")

        return handle(context, call)

    def ImportCollateral(
        self, request: admin_pb2.ImportCollateralRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.ImportCollateralResponse:
            report = self._uc.import_collateral(bytes(request.bundle), actor=actor_fields(current_actor()))
            items = [
                admin_pb2.CollateralItem(
                    kind=r["kind"], sha256=bytes.fromhex(r["sha256"]), already_present=False
                )
                for r in report.added
            ] + [
                admin_pb2.CollateralItem(
                    kind=r["kind"], sha256=bytes.fromhex(r["sha256"]), already_present=True
                )
                for r in report.unchanged
            ]
            return admin_pb2.ImportCollateralResponse(items=items, added=len(report.added))

        return handle(context, call)
