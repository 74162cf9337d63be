"""The Admin servicer (thread-per-request, local socket): decode the request, call a use case, encode
the reply. Coded errors become statuses with an ``ErrorDetail`` trailer; anything unexpected is logged
and answered INTERNAL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from attestation.errors import AttestationError
from kms.admin import Admin, PolicyChange
from kms.errors import KmsError
from kms.policy_source import ActivePolicy
from kms.release import ReleaseDenied
from kms.server import codec
from kms.server.errors import INTERNAL, abort
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


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Served only on the local admin socket until operator authentication exists."""

    def __init__(self, admin: Admin) -> None:
        self._uc = admin

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

    def ApproveNode(self, request: admin_pb2.ApproveNodeRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: admin_pb2.NodeChangeResponse(
                node=codec.node_out(
                    self._uc.approve_node(request.node_id, list(request.groups), request.comment)
                )
            ),
        )

    def RevokeNode(self, request: admin_pb2.RevokeNodeRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: admin_pb2.NodeChangeResponse(
                node=codec.node_out(self._uc.revoke_node(request.node_id, request.reason))
            ),
        )

    def SuspendNode(self, request: admin_pb2.SuspendNodeRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: admin_pb2.NodeChangeResponse(
                node=codec.node_out(self._uc.suspend_node(request.node_id, request.reason))
            ),
        )

    def CreateKey(self, request: admin_pb2.CreateKeyRequest, context: grpc.ServicerContext) -> Any:
        def call() -> admin_pb2.KeyChangeResponse:
            kind = codec.KIND_IN.get(request.kind)
            if kind is None:
                raise codec.invalid("kind must be KEY_KIND_DATASET or KEY_KIND_MODEL")
            return admin_pb2.KeyChangeResponse(key=codec.key_out(self._uc.create_key(request.name, kind)))

        return handle(context, call)

    def RotateKey(self, request: admin_pb2.RotateKeyRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context, lambda: admin_pb2.KeyChangeResponse(key=codec.key_out(self._uc.rotate_key(request.name)))
        )

    def DisableKey(self, request: admin_pb2.DisableKeyRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: admin_pb2.KeyChangeResponse(
                key=codec.key_out(self._uc.disable_key(request.name, request.reason))
            ),
        )

    def EnableKey(self, request: admin_pb2.EnableKeyRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: admin_pb2.KeyChangeResponse(
                key=codec.key_out(self._uc.enable_key(request.name, request.comment))
            ),
        )

    def DestroyKey(self, request: admin_pb2.DestroyKeyRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: admin_pb2.KeyChangeResponse(
                key=codec.key_out(self._uc.destroy_key(request.name, request.confirm_name, request.reason))
            ),
        )

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
            version, report = self._uc.rotate_kek(request.comment)
            return admin_pb2.RotateKekResponse(
                rotation=admin_pb2.KekRotation(kek_version=version, rewrapped=report.rewrapped)
            )

        return handle(context, call)

    def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: _policy_out(self._uc.get_policy()))

    def PutPolicy(self, request: admin_pb2.PutPolicyRequest, context: grpc.ServicerContext) -> Any:
        return handle(
            context,
            lambda: _policy_change_out(
                self._uc.put_policy(request.toml, request.expected_version, request.dry_run)
            ),
        )

    def ImportCollateral(
        self, request: admin_pb2.ImportCollateralRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> admin_pb2.ImportCollateralResponse:
            report = self._uc.import_collateral(bytes(request.bundle))
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
