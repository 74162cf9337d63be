"""``AuditClient``: the control plane's Audit service (ledger entries, signed checkpoints, proofs, export)
from the operator's side. Checkpoints come back as ``kms.audit.checkpoint.Checkpoint``, the form the
offline verifier checks; nothing here trusts the server: proofs and signatures are checked by the caller
with ``kms.audit``. A refused call raises ``OperatorError``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.message import Message

from kms.audit.checkpoint import Checkpoint, Signature
from kms.audit.errors import ExportInvalid
from proto.rpc_failure import Endpoint
from proto.sovereign.v1 import audit_pb2, audit_pb2_grpc
from sovereign.client.channel import Metadata
from sovereign.client.errors import OPERATOR_PORT, OperatorError
from sovereign.client.records import AuditPage, Decision
from sovereign.client.wire import from_message, wire_name

DEFAULT_TIMEOUT = 60.0


def checkpoint_in(msg: audit_pb2.SignedCheckpoint) -> Checkpoint:
    """A server checkpoint back in the core's form; its signed body must be exactly what the fields say."""
    body = bytes(msg.signed_body).decode(errors="replace")
    time_text = body.rstrip("\n").rsplit("\n", 1)[-1]
    cp = Checkpoint(
        msg.tree_size,
        bytes(msg.root_hash),
        time_text,
        msg.key_name,
        Signature(msg.key_version, bytes(msg.signature)),
    )
    if cp.message() != bytes(msg.signed_body):
        raise ExportInvalid(f"checkpoint of size {msg.tree_size}: the signed body does not match its fields")
    return cp


class AuditClient:
    """Audit calls over ``channel``, each with ``metadata`` (the bearer token) and ``timeout`` seconds
    (the export stream has no deadline: a large ledger takes as long as it takes)."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        metadata: Metadata = (),
        timeout: float = DEFAULT_TIMEOUT,
        target: str = "",
    ) -> None:
        self._endpoint = Endpoint(target, "Audit", OPERATOR_PORT)
        self._stub = audit_pb2_grpc.AuditStub(channel)
        self._metadata = tuple(metadata)
        self._timeout = timeout

    def _call(self, method: Callable[..., Any], request: Message) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise OperatorError.from_rpc(err, self._endpoint) from None

    def list_entries(
        self,
        *,
        node_id: str = "",
        key_name: str = "",
        node_name: str = "",
        key_prefix: str = "",
        decision: Decision | None = None,
        reason_code: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> AuditPage:
        """Entries matching every filter given, in sequence order, one page."""
        request = audit_pb2.ListEntriesRequest(
            node_id=node_id,
            key_name=key_name,
            node_name=node_name,
            key_prefix=key_prefix,
            decision=wire_name(decision),
            reason_code=reason_code,
            page_size=page_size,
            page_token=page_token,
        )
        if start is not None:
            request.start_time.FromDatetime(start)
        if end is not None:
            request.end_time.FromDatetime(end)
        return from_message(AuditPage, self._call(self._stub.ListEntries, request))

    def checkpoint(self, tree_size: int = 0) -> Checkpoint:
        """The signed checkpoint of ``tree_size`` entries (0: the latest)."""
        request = audit_pb2.GetCheckpointRequest(tree_size=tree_size)
        return checkpoint_in(self._call(self._stub.GetCheckpoint, request))

    def inclusion_proof(self, leaf_index: int, tree_size: int) -> tuple[bytes, ...]:
        request = audit_pb2.GetInclusionProofRequest(leaf_index=leaf_index, tree_size=tree_size)
        return tuple(bytes(h) for h in self._call(self._stub.GetInclusionProof, request).hashes)

    def consistency_proof(self, first_size: int, second_size: int) -> tuple[bytes, ...]:
        request = audit_pb2.GetConsistencyProofRequest(first_size=first_size, second_size=second_size)
        return tuple(bytes(h) for h in self._call(self._stub.GetConsistencyProof, request).hashes)

    def provenance(self, output_sha256: bytes) -> tuple[bytes, int]:
        """The signed provenance statement (DSSE envelope JSON) of the output with this plaintext SHA-256,
        and its ``model.output`` ledger sequence. Verify it with ``kms.provenance.verify``."""
        reply = self._call(
            self._stub.GetProvenance, audit_pb2.GetProvenanceRequest(output_sha256=output_sha256)
        )
        return bytes(reply.envelope), int(reply.output_sequence)

    def signing_keys(self) -> dict[str, dict[int, bytes]]:
        """Every version of the audit and provenance public keys: {key name: {version: raw Ed25519}}."""
        reply = self._call(self._stub.GetSigningKeys, audit_pb2.GetSigningKeysRequest())
        out: dict[str, dict[int, bytes]] = {}
        for key in reply.keys:
            out.setdefault(key.key_name, {})[key.version] = bytes(key.public_key)
        return out

    def export(self, start: int = 0, end: int = 0) -> Iterator[bytes | Checkpoint]:
        """Every entry (its canonical bytes) and checkpoint from ``start`` up to the checkpoint of size
        ``end`` (0: the latest), in ledger order."""
        request = audit_pb2.ExportRequest(start_sequence=start, end_sequence=end)
        try:
            for item in self._stub.Export(request, metadata=self._metadata):
                if item.HasField("checkpoint"):
                    yield checkpoint_in(item.checkpoint)
                else:
                    yield bytes(item.entry.canonical)
        except grpc.RpcError as err:
            raise OperatorError.from_rpc(err, self._endpoint) from None
