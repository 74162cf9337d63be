"""The Audit servicer (thread-per-request, on the operator endpoint next to Admin): list entries,
checkpoints, inclusion and consistency proofs, streaming export. Read-only over ``LedgerReader``;
``canonical`` in every entry is the authority, the other fields are decoded from it for convenience."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc

from kms.audit.checkpoint import Checkpoint
from kms.audit.entry import Decision, Entry, format_time
from kms.audit.errors import AuditError
from kms.errors import Code, KmsError
from kms.server import codec
from kms.server.errors import INTERNAL, abort
from kms.server.servicers import handle
from kms.sql.audit_ledger import EntryFilter, StoredEntry
from kms.sql.audit_reader import LedgerReader
from kms.usecases.provenance_issue import ProvenanceIssuer
from proto.sovereign.v1 import audit_pb2, audit_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

AUDIT_SERVICE = audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name
SIGNATURE_ALGORITHM = "ed25519"
_DECISION_OUT = {Decision.GRANT: audit_pb2.DECISION_GRANT, Decision.DENY: audit_pb2.DECISION_DENY}
_DECISION_IN = {audit_pb2.DECISION_GRANT: "grant", audit_pb2.DECISION_DENY: "deny"}
_PURPOSE_OUT = {"read": common_pb2.PURPOSE_READ, "write": common_pb2.PURPOSE_WRITE}


def entry_out(stored: StoredEntry) -> audit_pb2.AuditEntry:
    e = Entry.decode(stored.canonical)
    f = e.fields
    out = audit_pb2.AuditEntry(
        sequence=stored.seq,
        canonical=stored.canonical,
        leaf_hash=stored.leaf_hash,
        time=codec.ts(datetime.strptime(e.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)),
        event=str(e.kind),
        decision=_DECISION_OUT.get(e.decision, audit_pb2.DECISION_UNSPECIFIED),
        node_id=str(f.get("node_id") or ""),
        key_name=str(f.get("key_name") or ""),
        reasons=[common_pb2.Reason(code=r.code, message=r.message) for r in e.reasons],
        actor=e.actor,
    )
    version, purpose, request_id = f.get("key_version"), f.get("purpose"), f.get("request_id")
    if isinstance(version, int) and version > 0:
        out.key_version = version
    if isinstance(purpose, str):
        out.purpose = _PURPOSE_OUT.get(purpose, common_pb2.PURPOSE_UNSPECIFIED)
    if isinstance(request_id, str) and len(request_id) == 32:
        out.request_id = bytes.fromhex(request_id)
    return out


def checkpoint_out(cp: Checkpoint) -> audit_pb2.SignedCheckpoint:
    return audit_pb2.SignedCheckpoint(
        tree_size=cp.size,
        root_hash=cp.root,
        time=codec.ts(datetime.strptime(cp.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)),
        signed_body=cp.message(),
        signature=cp.signature.value,
        signature_algorithm=SIGNATURE_ALGORITHM,
        key_name=cp.key_id,
        key_version=cp.signature.version,
    )


def _time_text(ts: Any, present: bool) -> str:
    return format_time(ts.ToDatetime(tzinfo=UTC)) if present else ""


def filter_in(request: audit_pb2.ListEntriesRequest) -> EntryFilter:
    return EntryFilter(
        node_id=request.node_id,
        key_name=request.key_name,
        node_name=request.node_name,
        key_prefix=request.key_prefix,
        decision=_DECISION_IN.get(request.decision, ""),
        reason_code=request.reason_code,
        start_time=_time_text(request.start_time, request.HasField("start_time")),
        end_time=_time_text(request.end_time, request.HasField("end_time")),
    )


class AuditServicer(audit_pb2_grpc.AuditServicer):
    def __init__(self, reader: LedgerReader, provenance: ProvenanceIssuer | None = None) -> None:
        self._reader = reader
        self._provenance = provenance

    def _issuer(self) -> ProvenanceIssuer:
        if self._provenance is None:
            raise KmsError("this server issues no provenance statements", code=Code.SERVER_CONFIG_INVALID)
        return self._provenance

    def GetProvenance(self, request: audit_pb2.GetProvenanceRequest, context: grpc.ServicerContext) -> Any:
        def call() -> audit_pb2.Provenance:
            issued = self._issuer().issue(bytes(request.output_sha256))
            return audit_pb2.Provenance(envelope=issued.envelope, output_sequence=issued.output_sequence)

        return handle(context, call)

    def GetSigningKeys(self, request: audit_pb2.GetSigningKeysRequest, context: grpc.ServicerContext) -> Any:
        def call() -> audit_pb2.SigningKeys:
            keys = self._issuer().signing_keys()
            return audit_pb2.SigningKeys(
                keys=[
                    audit_pb2.PublicKey(key_name=name, version=v, public_key=raw)
                    for name, versions in sorted(keys.items())
                    for v, raw in sorted(versions.items())
                ]
            )

        return handle(context, call)

    def ListEntries(self, request: audit_pb2.ListEntriesRequest, context: grpc.ServicerContext) -> Any:
        def call() -> audit_pb2.ListEntriesResponse:
            rows, token = self._reader.list_entries(filter_in(request), request.page_size, request.page_token)
            return audit_pb2.ListEntriesResponse(entries=[entry_out(r) for r in rows], next_page_token=token)

        return handle(context, call)

    def GetCheckpoint(self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext) -> Any:
        return handle(context, lambda: checkpoint_out(self._reader.checkpoint(request.tree_size)))

    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> audit_pb2.InclusionProof:
            hashes = self._reader.inclusion(request.leaf_index, request.tree_size)
            return audit_pb2.InclusionProof(
                leaf_index=request.leaf_index, tree_size=request.tree_size, hashes=hashes
            )

        return handle(context, call)

    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> Any:
        def call() -> audit_pb2.ConsistencyProof:
            hashes = self._reader.consistency(request.first_size, request.second_size)
            return audit_pb2.ConsistencyProof(
                first_size=request.first_size, second_size=request.second_size, hashes=hashes
            )

        return handle(context, call)

    def Export(
        self, request: audit_pb2.ExportRequest, context: grpc.ServicerContext
    ) -> Iterator[audit_pb2.ExportItem]:
        try:
            for item in self._reader.export(request.start_sequence, request.end_sequence):
                if isinstance(item, Checkpoint):
                    yield audit_pb2.ExportItem(checkpoint=checkpoint_out(item))
                else:
                    yield audit_pb2.ExportItem(entry=entry_out(item))
        except (AuditError, KmsError) as err:  # e.g. the database lost mid-stream: STORAGE_ERROR, not UNKNOWN
            abort(context, err)
        except Exception:
            log.exception("unexpected failure during an export")
            abort(context, INTERNAL)


def add_audit_service(
    server: grpc.Server, reader: LedgerReader, provenance: ProvenanceIssuer | None = None
) -> str:
    """Register the Audit service; returns its full name (for reflection)."""
    audit_pb2_grpc.add_AuditServicer_to_server(AuditServicer(reader, provenance), server)
    return AUDIT_SERVICE
