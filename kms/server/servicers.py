"""The Admin servicer (thread-per-request, on the operator endpoint behind ``OperatorAuthInterceptor``):
decode the request, call a use case as the authenticated operator (``current_actor()``), audit, encode
the reply. Coded errors become statuses with an ``ErrorDetail`` trailer; anything unexpected is logged
and answered INTERNAL.

Two-person rule: a method in ``TwoPersonRule.config.actions`` is validated, then held as a pending
change (the serialized request, bound by its digest) instead of being applied; ``ApprovePendingChange``
by a different operator holding the method's role applies exactly that request. The change is claimed
(PENDING -> APPLIED, compare-and-set) before it is applied, so two approvers cannot both apply it; if
applying fails the claim is undone and the change stays pending.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2

from attestation.errors import AttestationError
from kms.admin import Admin, PolicyChange, page_bounds, require_text
from kms.audit.entry import Kind
from kms.auth import interceptor
from kms.auth.errors import AuthError
from kms.auth.interceptor import current_actor
from kms.auth.roles import ADMIN_SERVICE, method_path
from kms.auth.tokens import Actor
from kms.auth.two_person import ChangeState, OperatorRef, PendingChange, TwoPersonRule, verify_payload
from kms.clock import Clock
from kms.errors import Code, KmsError
from kms.policy_source import ActivePolicy
from kms.release import ReleaseDenied
from kms.server import codec
from kms.server.errors import INTERNAL, abort
from kms.server.operator_audit import OperatorAudit, actor_fields
from kms.storage.pending_changes import SqlPendingStore
from policies import parse_policy
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


def _policy_change_out(c: PolicyChange) -> admin_pb2.PutPolicyResponse:
    return admin_pb2.PutPolicyResponse(
        applied=admin_pb2.PolicyApplied(
            policy=_policy_out(c.policy),
            dry_run=c.dry_run,
            reappraisal=admin_pb2.Reappraisal(
                nodes_checked=c.nodes_checked,
                suspended=[
                    admin_pb2.SuspendedNode(
                        node_id=ch.node_id, reasons=codec.reasons_out(r.to_dict() for r in ch.reasons)
                    )
                    for ch in c.suspended
                ],
            ),
        )
    )


_STATE_OUT = {
    ChangeState.PENDING: admin_pb2.PENDING_CHANGE_STATE_PENDING,
    ChangeState.APPLIED: admin_pb2.PENDING_CHANGE_STATE_APPLIED,
    ChangeState.REJECTED: admin_pb2.PENDING_CHANGE_STATE_REJECTED,
    ChangeState.EXPIRED: admin_pb2.PENDING_CHANGE_STATE_EXPIRED,
}
_STATE_IN = {v: k for k, v in _STATE_OUT.items()}
# Requests of the methods that can be held, by method name.
HOLDABLE: dict[str, type[Any]] = {
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
}


def codec_text(request: Any) -> str:
    """A short description of a held request for humans (the request itself is stored exactly)."""
    name = getattr(request, "name", "") or getattr(request, "node_id", "")
    return str(name)[:128]


def who(ref: OperatorRef) -> str:
    return f"{ref.username} <{ref.subject}>"


def pending_out(change: PendingChange) -> admin_pb2.PendingChange:
    packed = any_pb2.Any()
    packed.Pack(HOLDABLE[change.action].FromString(change.payload))
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
        self._rule = rule
        self._audit = audit
        self._clock = clock
        # One table: how each held method is applied, as whom (the operator; for an approved change
        # the proposer, the approval being audited separately). The use cases write the audit entry.
        A = actor_fields
        self._apply: dict[str, Callable[[Any, Actor | OperatorRef], tuple[str, Any]]] = {
            "ApproveNode": lambda r, by: ("node", codec.node_out(self._uc.approve_node(r.node_id, list(r.groups), r.comment, actor=A(by)))),
            "RevokeNode": lambda r, by: ("node", codec.node_out(self._uc.revoke_node(r.node_id, r.reason, actor=A(by)))),
            "SuspendNode": lambda r, by: ("node", codec.node_out(self._uc.suspend_node(r.node_id, r.reason, actor=A(by)))),
            "CreateKey": lambda r, by: ("key", codec.key_out(self._create_key(r, by))),
            "RotateKey": lambda r, by: ("key", codec.key_out(self._uc.rotate_key(r.name, actor=A(by)))),
            "DisableKey": lambda r, by: ("key", codec.key_out(self._uc.disable_key(r.name, r.reason, actor=A(by)))),
            "EnableKey": lambda r, by: ("key", codec.key_out(self._uc.enable_key(r.name, r.comment, actor=A(by)))),
            "DestroyKey": lambda r, by: ("key", codec.key_out(self._uc.destroy_key(r.name, r.confirm_name, r.reason, actor=A(by)))),
            "RotateKek": lambda r, by: ("rotation", self._rotate_kek(r, by)),
            "PutPolicy": lambda r, by: ("policy", self._put_policy(r, by)),
        }  # fmt: skip
        self._check: dict[str, Callable[[Any], str]] = {
            "PutPolicy": self._check_policy,
            "DestroyKey": self._check_destroy,
            "ApproveNode": self._check_approve,
        }

    # -- the two-person rule

    def _change(self, method: str, request: Any, fields: dict[str, Any]) -> tuple[str, Any] | PendingChange:
        """Apply ``request`` now, or hold it when the two-person rule covers ``method``."""
        actor = current_actor()
        if not self._rule.requires_approval(method):
            return self._apply[method](request, actor)
        summary = self._check.get(method, lambda r: f"{method} {codec_text(r)}")(request)
        change = self._rule.propose(
            method, request.SerializeToString(deterministic=True), summary, actor, now=self._clock()
        )
        self._audit.pending(actor, Kind.PENDING_CREATE, {**fields, "pending_id": change.change_id})
        return change

    def _check_policy(self, request: admin_pb2.PutPolicyRequest) -> str:
        parse_policy(request.toml, "PutPolicy")
        active = self._uc.get_policy()
        if active.version != request.expected_version:
            raise KmsError(
                f"the active policy is version {active.version}, not {request.expected_version}",
                code=Code.POLICY_VERSION_CONFLICT,
            )
        return f"replace policy version {active.version}"

    def _check_destroy(self, request: admin_pb2.DestroyKeyRequest) -> str:
        require_text(request.reason, "reason", required=True)
        if request.confirm_name != request.name:
            raise KmsError("confirm_name must repeat the key name exactly", code=Code.REQUEST_INVALID)
        self._uc.describe_key(request.name)
        return f"destroy key {request.name}"

    def _check_approve(self, request: admin_pb2.ApproveNodeRequest) -> str:
        groups = self._uc.check_approval(request.node_id, list(request.groups), request.comment)
        return f"approve node {request.node_id} into [{', '.join(groups)}]"

    def _refuse(self, method: str, err: AuthError) -> AuthError:
        self._audit.refused(current_actor(), method_path(ADMIN_SERVICE, method), err)
        return err

    def ListPendingChanges(
        self, request: admin_pb2.ListPendingChangesRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.ListPendingChangesResponse:
            state = _STATE_IN.get(request.state, ChangeState.PENDING)
            offset, size = page_bounds(request.page_size, request.page_token)
            self._store().expire_due(self._clock())
            changes = self._store().page(state, offset, size)
            return admin_pb2.ListPendingChangesResponse(
                changes=[pending_out(c) for c in changes],
                next_page_token=str(offset + size) if len(changes) == size else "",
            )

        return handle(context, call)

    def _store(self) -> SqlPendingStore:
        store = self._rule.store
        assert isinstance(store, SqlPendingStore)
        return store

    def ApprovePendingChange(
        self, request: admin_pb2.ApprovePendingChangeRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.ApprovePendingChangeResponse:
            actor = current_actor()
            require_text(request.comment, "comment", required=False)
            try:
                decided = self._rule.approve(
                    request.change_id, actor, now=self._clock(), comment=request.comment
                )
            except AuthError as err:
                raise self._refuse("ApprovePendingChange", err) from None
            try:
                verify_payload(decided)
                held = HOLDABLE[decided.action].FromString(decided.payload)
                kind, result = self._apply[decided.action](held, decided.proposed_by)
            except BaseException:
                self._rule.store.swap(decided, dataclasses.replace(
                    decided, state=ChangeState.PENDING, decided_by=None, decided_at=None, comment=""
                ))  # fmt: skip
                raise
            self._audit.pending(
                actor, Kind.PENDING_APPROVE, {"pending_id": decided.change_id, "comment": decided.comment}
            )
            return admin_pb2.ApprovePendingChangeResponse(change=pending_out(decided), **{kind: result})

        return handle(context, call)

    def RejectPendingChange(
        self, request: admin_pb2.RejectPendingChangeRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.PendingChange:
            actor = current_actor()
            require_text(request.comment, "comment", required=True)
            try:
                decided = self._rule.reject(
                    request.change_id, actor, now=self._clock(), comment=request.comment
                )
            except AuthError as err:
                raise self._refuse("RejectPendingChange", err) from None
            self._audit.pending(
                actor, Kind.PENDING_REJECT, {"pending_id": decided.change_id, "comment": decided.comment}
            )
            return pending_out(decided)

        return handle(context, call)

    # -- helpers shared by direct and approved changes

    def _create_key(self, request: admin_pb2.CreateKeyRequest, by: Actor | OperatorRef) -> Any:
        kind = codec.KIND_IN.get(request.kind)
        if kind is None:
            raise codec.invalid("kind must be KEY_KIND_DATASET or KEY_KIND_MODEL")
        return self._uc.create_key(request.name, kind, actor=actor_fields(by))

    def _rotate_kek(
        self, request: admin_pb2.RotateKekRequest, by: Actor | OperatorRef
    ) -> admin_pb2.KekRotation:
        version, report = self._uc.rotate_kek(request.comment, actor=actor_fields(by))
        return admin_pb2.KekRotation(kek_version=version, rewrapped=report.rewrapped)

    def _put_policy(
        self, request: admin_pb2.PutPolicyRequest, by: Actor | OperatorRef
    ) -> admin_pb2.PolicyApplied:
        change = self._uc.put_policy(
            request.toml,
            request.expected_version,
            request.dry_run,
            by=f"operator:{by.subject}",
            actor=actor_fields(by),
        )
        return _policy_change_out(change).applied

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

    def _node_change(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        def call() -> admin_pb2.NodeChangeResponse:
            out = self._change(method, request, {"node_id": request.node_id})
            if isinstance(out, PendingChange):
                return admin_pb2.NodeChangeResponse(pending_change=pending_out(out))
            return admin_pb2.NodeChangeResponse(node=out[1])

        return handle(context, call)

    def ApproveNode(self, request: admin_pb2.ApproveNodeRequest, context: grpc.ServicerContext) -> Any:
        return self._node_change("ApproveNode", request, context)

    def RevokeNode(self, request: admin_pb2.RevokeNodeRequest, context: grpc.ServicerContext) -> Any:
        return self._node_change("RevokeNode", request, context)

    def SuspendNode(self, request: admin_pb2.SuspendNodeRequest, context: grpc.ServicerContext) -> Any:
        return self._node_change("SuspendNode", request, context)

    def _key_change(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        def call() -> admin_pb2.KeyChangeResponse:
            out = self._change(method, request, {"key_name": request.name})
            if isinstance(out, PendingChange):
                return admin_pb2.KeyChangeResponse(pending_change=pending_out(out))
            return admin_pb2.KeyChangeResponse(key=out[1])

        return handle(context, call)

    def CreateKey(self, request: admin_pb2.CreateKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change("CreateKey", request, context)

    def RotateKey(self, request: admin_pb2.RotateKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change("RotateKey", request, context)

    def DisableKey(self, request: admin_pb2.DisableKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change("DisableKey", request, context)

    def EnableKey(self, request: admin_pb2.EnableKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change("EnableKey", request, context)

    def DestroyKey(self, request: admin_pb2.DestroyKeyRequest, context: grpc.ServicerContext) -> Any:
        return self._key_change("DestroyKey", request, context)

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
        def call() -> admin_pb2.RotateKekResponse:
            out = self._change("RotateKek", request, {})
            if isinstance(out, PendingChange):
                return admin_pb2.RotateKekResponse(pending_change=pending_out(out))
            return admin_pb2.RotateKekResponse(rotation=out[1])

        return handle(context, call)

    def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: _policy_out(self._uc.get_policy()))

    def PutPolicy(self, request: admin_pb2.PutPolicyRequest, context: grpc.ServicerContext) -> Any:
        def call() -> admin_pb2.PutPolicyResponse:
            if request.dry_run:  # changes nothing: never held, not audited as a change
                return admin_pb2.PutPolicyResponse(applied=self._put_policy(request, current_actor()))
            out = self._change("PutPolicy", request, {"policy_version": request.expected_version})
            if isinstance(out, PendingChange):
                return admin_pb2.PutPolicyResponse(pending_change=pending_out(out))
            return admin_pb2.PutPolicyResponse(applied=out[1])

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
