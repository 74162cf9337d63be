"""The console's only way into the control plane: the operator gRPC port, with the signed-in person's
own access token. Generated types stop here; views get plain dictionaries and coded errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from attestation.coded import CodedError
from proto.contract import parse_error_detail
from proto.sovereign.v1 import admin_pb2, admin_pb2_grpc, audit_pb2, audit_pb2_grpc, common_pb2

NODE_STATES = {
    "attested": common_pb2.NODE_STATE_ATTESTED,
    "pending": common_pb2.NODE_STATE_PENDING_APPROVAL,
    "suspended": common_pb2.NODE_STATE_SUSPENDED,
    "revoked": common_pb2.NODE_STATE_REVOKED,
}
_STATE_NAME = {v: k for k, v in NODE_STATES.items()}
_KEY_STATE = {admin_pb2.KEY_STATE_ENABLED: "enabled", admin_pb2.KEY_STATE_DISABLED: "disabled",
              admin_pb2.KEY_STATE_DESTROYED: "destroyed"}  # fmt: skip
_DECISION = {audit_pb2.DECISION_GRANT: "grant", audit_pb2.DECISION_DENY: "deny"}
DECISIONS = {"grant": audit_pb2.DECISION_GRANT, "deny": audit_pb2.DECISION_DENY}
_PENDING_STATE = {admin_pb2.PENDING_CHANGE_STATE_PENDING: "pending", admin_pb2.PENDING_CHANGE_STATE_APPLIED: "applied",
                  admin_pb2.PENDING_CHANGE_STATE_REJECTED: "rejected", admin_pb2.PENDING_CHANGE_STATE_EXPIRED: "expired"}  # fmt: skip
PAGE = 1000


class BackendError(CodedError):
    """A refused or failed operator call, with the server's code and hint."""

    def __init__(self, status: str, code: str, message: str, hint: str = "") -> None:
        super().__init__(code, message, hint)
        self.status = status


def _time(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def node_out(node: Any) -> dict[str, Any]:
    claims = node.claims
    return {
        "node_id": node.node_id,
        "name": node.node_name,
        "state": _STATE_NAME.get(node.state, "unknown"),
        "tee": claims.tee or "",
        "groups": list(node.groups),
        "requested_groups": list(node.requested_groups),
        "lease_expires": _time(node.lease.expires_at),
        "reasons": [{"code": r.code, "message": r.message} for r in node.reasons],
        "policy_version": node.policy_version,
        "registered_at": _time(node.registered_at),
        "state_changed_at": _time(node.state_changed_at),
        "claims": _claims(claims),
        "gpus": [_gpu(gpu) for gpu in claims.gpus],
    }


def _claims(claims: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for field, value in claims.ListFields():
        if field.name == "gpus":
            continue  # a table of their own
        out[field.name] = _claim_text(value)
    return out


def _claim_text(value: Any) -> str:
    """Bytes as hex, a repeated field (TDX RTMR0-3) one item after another, never Python's repr."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str | int | float):
        return str(value)
    return " ".join(_claim_text(item) for item in value)


def _gpu(gpu: Any) -> dict[str, str]:
    return {
        "architecture": gpu.architecture,
        "driver": gpu.driver_version,
        "vbios": gpu.vbios_version,
        "ueid": gpu.ueid,
        "measurements": gpu.measurement_result,
        "cc_mode": gpu.cc_mode,
        "revocation": gpu.revocation,
        "simulated": "yes" if gpu.simulated else "no",
    }


def entry_out(entry: Any) -> dict[str, Any]:
    try:
        doc = json.loads(entry.canonical)
    except ValueError:
        doc = {}
    fields = doc.get("fields", {}) if isinstance(doc, dict) else {}
    fields = fields if isinstance(fields, dict) else {}
    return {
        "sequence": entry.sequence,
        "time": _time(entry.time),
        "event": entry.event,
        "decision": _DECISION.get(entry.decision, ""),
        "node_id": entry.node_id,
        "node_name": str(fields.get("node_name", "")),
        "username": str(fields.get("username", "")),
        "key_name": entry.key_name,
        "key_version": entry.key_version,
        "reasons": [{"code": r.code, "message": r.message} for r in entry.reasons],
        "actor": entry.actor,
        "canonical": entry.canonical.decode("utf-8", "replace"),
    }


@dataclass(frozen=True)
class Query:
    node_id: str = ""
    key_name: str = ""
    decision: str = ""
    since: datetime | None = None
    until: datetime | None = None


class Backend:
    def __init__(self, address: str, ca_pem: bytes) -> None:
        # Always TLS with the pinned CA: the console refuses to run beside --insecure-dev.
        self._channel = grpc.aio.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
        )
        channel: Any = self._channel  # the generated stubs are typed for the sync channel; aio works alike
        self._admin = admin_pb2_grpc.AdminStub(channel)
        self._audit = audit_pb2_grpc.AuditStub(channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(self, method: Any, request: Any, token: str) -> Any:
        try:
            return await method(request, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        except grpc.aio.AioRpcError as err:
            detail = parse_error_detail(err.trailing_metadata())
            code = detail.reason if detail is not None else err.code().name
            hint = detail.hint if detail is not None else ""
            message = err.details() or ""
            prefix = f"{code}: "
            message = message.removeprefix(prefix)
            raise BackendError(err.code().name, code, message, hint) from None

    async def nodes(self, token: str, states: Sequence[str] = ()) -> list[dict[str, Any]]:
        out, page = [], ""
        request = admin_pb2.ListNodesRequest(states=[NODE_STATES[s] for s in states], page_size=PAGE)
        while True:
            request.page_token = page
            reply = await self._call(self._admin.ListNodes, request, token)
            out += [node_out(n) for n in reply.nodes]
            page = reply.next_page_token
            if not page:
                return out

    async def node(self, token: str, node_id: str) -> dict[str, Any]:
        return node_out(
            await self._call(self._admin.GetNode, admin_pb2.GetNodeRequest(node_id=node_id), token)
        )

    async def keys(self, token: str) -> list[dict[str, Any]]:
        reply = await self._call(self._admin.ListKeys, admin_pb2.ListKeysRequest(), token)
        return [
            {
                "name": k.name,
                "state": _KEY_STATE.get(k.state, "unknown"),
                "latest_version": k.latest_version,
                "versions": [{"version": v.version, "created_at": _time(v.created_at)} for v in k.versions],
                "updated_at": _time(k.updated_at),
            }
            for k in reply.keys
        ]

    async def entries(self, token: str, query: Query, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` matching entries, newest last."""
        request = audit_pb2.ListEntriesRequest(
            node_id=query.node_id, key_name=query.key_name, decision=DECISIONS.get(query.decision, audit_pb2.DECISION_UNSPECIFIED),
            page_size=min(PAGE, limit),
        )  # fmt: skip
        if query.since is not None:
            request.start_time.CopyFrom(_stamp(query.since))
        if query.until is not None:
            request.end_time.CopyFrom(_stamp(query.until))
        out: list[dict[str, Any]] = []
        page = ""
        while len(out) < limit:
            request.page_token = page
            reply = await self._call(self._audit.ListEntries, request, token)
            out += [entry_out(e) for e in reply.entries]
            page = reply.next_page_token
            if not page:
                break
        return out[:limit]

    async def entry(self, token: str, sequence: int) -> dict[str, Any] | None:
        request = audit_pb2.ListEntriesRequest(page_size=1, page_token=str(sequence))
        reply = await self._call(self._audit.ListEntries, request, token)
        found = [e for e in reply.entries if e.sequence == sequence]
        return entry_out(found[0]) if found else None

    async def proof(self, token: str, sequence: int) -> dict[str, Any]:
        """What the browser needs to check entry ``sequence`` against the latest signed checkpoint."""
        checkpoint = await self._call(self._audit.GetCheckpoint, audit_pb2.GetCheckpointRequest(), token)
        if sequence >= checkpoint.tree_size:
            raise BackendError("NOT_FOUND", "AUDIT_NOT_FOUND", f"entry {sequence} is not under a signed checkpoint yet",
                               "wait a second for the next checkpoint")  # fmt: skip
        entry = await self.entry(token, sequence)
        if entry is None:
            raise BackendError("NOT_FOUND", "AUDIT_NOT_FOUND", f"no entry {sequence}")
        proof = await self._call(
            self._audit.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest(leaf_index=sequence, tree_size=checkpoint.tree_size),
            token,
        )
        return {
            "sequence": sequence,
            "canonical": entry["canonical"],
            "path": [h.hex() for h in proof.hashes],
            "tree_size": checkpoint.tree_size,
            "root": checkpoint.root_hash.hex(),
            "signed_body": checkpoint.signed_body.hex(),
            "signature": checkpoint.signature.hex(),
            "algorithm": checkpoint.signature_algorithm,
            "key_name": checkpoint.key_name,
            "key_version": checkpoint.key_version,
            "checkpoint_time": _time(checkpoint.time),
        }

    async def checkpoint(self, token: str) -> dict[str, Any]:
        checkpoint = await self._call(self._audit.GetCheckpoint, audit_pb2.GetCheckpointRequest(), token)
        return {"tree_size": checkpoint.tree_size, "time": _time(checkpoint.time)}

    async def pending(self, token: str, state: str = "pending") -> list[dict[str, Any]]:
        wanted = {v: k for k, v in _PENDING_STATE.items()}[state]
        reply = await self._call(
            self._admin.ListPendingChanges,
            admin_pb2.ListPendingChangesRequest(state=wanted, page_size=PAGE),
            token,
        )
        return [
            {
                "change_id": c.change_id,
                "method": c.method,
                "summary": c.summary,
                "proposed_by": c.proposed_by,
                "proposed_at": _time(c.proposed_at),
                "expires_at": _time(c.expires_at),
                "state": _PENDING_STATE.get(c.state, "unknown"),
                "decided_by": c.decided_by,
            }
            for c in reply.changes
        ]

    async def approve(self, token: str, change_id: str, comment: str) -> None:
        request = admin_pb2.ApprovePendingChangeRequest(change_id=change_id, comment=comment)
        await self._call(self._admin.ApprovePendingChange, request, token)

    async def reject(self, token: str, change_id: str, comment: str) -> None:
        request = admin_pb2.RejectPendingChangeRequest(change_id=change_id, comment=comment)
        await self._call(self._admin.RejectPendingChange, request, token)
